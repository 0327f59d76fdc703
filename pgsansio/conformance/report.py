"""Conformance results as text for a person, JSON for a program, JUnit XML for a CI system.

The text report puts what failed first and shows, for each failure, the scenario line
that was expected and the message that came instead, decoded; then a summary per area.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from xml.etree import ElementTree as ET

from .runner import Result

__all__ = ["STATUSES", "by_area", "exit_status", "render"]

STATUSES = ("pass", "fail", "known", "n/a")


def by_area(results: Sequence[Result]) -> dict[str, Counter[str]]:
    """Counts of each status per scenario area, areas in first-seen order."""
    areas: dict[str, Counter[str]] = {}
    for r in results:
        areas.setdefault(r.scenario.area, Counter())[r.status] += 1
    return areas


def exit_status(results: Sequence[Result]) -> int:
    """0 when nothing failed (known findings and n/a do not fail a run), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0


def _text(results: Sequence[Result], target: str) -> str:
    out = [f"pgsansio conformance against {target}", ""]
    for r in results:
        mark = {"pass": "ok  ", "fail": "FAIL", "known": "KNOWN", "n/a": "n/a "}[r.status]
        out.append(f"{mark} {r.scenario.id}: {r.scenario.description}")
        if r.status != "pass":
            out.append(f"       {r.why}")
        if r.status in ("fail", "known") and (r.expected or r.got):
            if r.reference_got:
                out.append(f"       reference: {r.reference_got}")
                out.append(f"                  {r.reference_decoded}")
            else:
                out.append(f"       expected:  {r.expected}")
            out.append(f"       got:       {r.got}")
            if r.decoded:
                out.append(f"                  {r.decoded}")
    out.append("")
    out.append(f"{'area':<16} {'pass':>5} {'fail':>5} {'known':>6} {'n/a':>5}")
    for area, c in by_area(results).items():
        out.append(f"{area:<16} {c['pass']:>5} {c['fail']:>5} {c['known']:>6} {c['n/a']:>5}")
    total = Counter(r.status for r in results)
    out.append(
        f"{len(results)} scenarios: {total['pass']} passed, {total['fail']} failed, "
        f"{total['known']} known findings, {total['n/a']} not applicable"
    )
    return "\n".join(out) + "\n"


def _json(results: Sequence[Result], target: str) -> str:
    doc = {
        "target": target,
        "results": [
            {
                "id": r.scenario.id,
                "area": r.scenario.area,
                "pooling": r.scenario.pooling,
                "description": r.scenario.description,
                "status": r.status,
                "why": r.why,
                "expected": r.expected,
                "got": r.got,
                "decoded": r.decoded,
                "reference_got": r.reference_got,
                "reference_decoded": r.reference_decoded,
                "seconds": round(r.seconds, 4),
            }
            for r in results
        ],
        "areas": {a: dict(c) for a, c in by_area(results).items()},
    }
    return json.dumps(doc, indent=2) + "\n"


def _junit(results: Sequence[Result], target: str) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"pgsansio-conformance {target}",
        tests=str(len(results)),
        failures=str(sum(r.status == "fail" for r in results)),
        skipped=str(sum(r.status in ("n/a", "known") for r in results)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{r.scenario.area}",
            name=r.scenario.id,
            time=f"{r.seconds:.3f}",
        )
        detail = "\n".join(
            x
            for x in (
                r.scenario.description,
                f"expected: {r.expected}" if r.expected else "",
                f"reference: {r.reference_got}" if r.reference_got else "",
                f"got: {r.got}" if r.got else "",
                r.decoded,
            )
            if x
        )
        if r.status == "fail":
            ET.SubElement(case, "failure", message=r.why).text = detail
        elif r.status in ("n/a", "known"):
            ET.SubElement(case, "skipped", message=r.why).text = detail
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def render(results: Sequence[Result], fmt: str, target: str) -> str:
    """The report in ``fmt`` (``text``, ``json`` or ``junit``)."""
    return {"text": _text, "json": _json, "junit": _junit}[fmt](results, target)
