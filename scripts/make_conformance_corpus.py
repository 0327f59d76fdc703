"""Regenerate ``pgsansio/conformance/scenarios/corpus.scenario`` from the recorded corpus.

Every plain trace of ``tests/corpus`` is converted (``pgsansio conformance from-trace``);
the tables the recording harness created beforehand (its ``own_table`` calls in
``scripts/corpus/scenarios_drivers.py``) are created by the scenario in its own schema.
A converted conversation is kept only if it passes against PostgreSQL 15 and 18 as
recorded: one whose answers depend on the recording's user, time zone or a second
connection (cancel, LISTEN from elsewhere) is left out, and the run lists why.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgsansio.conformance.from_trace import TraceNotConvertible, convert  # noqa: E402
from pgsansio.conformance.runner import Target, run_suite  # noqa: E402
from pgsansio.conformance.scenario import FORMAT_LINE, parse_scenarios  # noqa: E402
from pgsansio.conformance.trace import read_trace  # noqa: E402
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster  # noqa: E402

OUT = ROOT / "pgsansio" / "conformance" / "scenarios" / "corpus.scenario"
HARNESS = ROOT / "scripts" / "corpus" / "scenarios_drivers.py"
OWN_TABLE = re.compile(r'own_table\(env, "(\w+)", "([^"]+)"\)')


def main() -> int:
    tables = dict(OWN_TABLE.findall(HARNESS.read_text("utf-8")))
    texts: dict[str, str] = {}
    for path in sorted((ROOT / "tests" / "corpus").glob("*/c1.jsonl")):
        sid = f"corpus.{path.parent.name}"
        try:
            texts[sid] = convert(read_trace(path), sid, tables=tables)
        except TraceNotConvertible as e:
            print(f"left out {sid}: {e}")
    scenarios = parse_scenarios(FORMAT_LINE + "\n" + "\n".join(texts.values()), "corpus")
    keep = set(texts)
    for version in (15, 18):
        c = Cluster(version=version)
        try:
            c.init()
            c.start()
            c.add_test_users()
            c.create_database(TEST_DATABASE)
            c.execute(f"GRANT CREATE ON DATABASE {TEST_DATABASE} TO PUBLIC;", dbname=TEST_DATABASE)
            user = "md5_user"
            target = Target("127.0.0.1", c.port, user, TEST_USERS[user][1], TEST_DATABASE)
            for r in run_suite(scenarios, target, timeout=2.0):
                if r.status != "pass" and r.scenario.id in keep:
                    keep.discard(r.scenario.id)
                    print(f"left out {r.scenario.id} (PostgreSQL {version}): {r.why}: {r.got}")
        finally:
            c.cleanup()
    body = [
        FORMAT_LINE,
        "# Converted from the recorded corpus (tests/corpus) by",
        "# scripts/make_conformance_corpus.py; do not edit by hand.",
        "",
    ]
    body += [texts[sid] for sid in texts if sid in keep]
    OUT.write_text("\n".join(body), "utf-8")
    print(f"{len(keep)} scenarios written to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
