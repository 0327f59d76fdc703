#!/usr/bin/env python3
"""Run the atheris harnesses for a fixed time each and report what they found.

Usage::

    fuzz/run.py --seconds 300                    # every harness, 5 minutes each
    fuzz/run.py --seconds 60 --harness client_role
    fuzz/run.py --repro fuzz/.crashes/server_role-crash-0123abcd

Before each run the seeds are rebuilt (``seeds.py``: the recorded corpus, our
own conversations, known bug shapes) into ``fuzz/.seeds/<harness>/``; what the
fuzzer discovers accumulates in ``fuzz/.corpus/<harness>/`` across runs; crash,
timeout and out-of-memory inputs land in ``fuzz/.crashes/`` and logs in
``fuzz/.logs/`` (all gitignored).

Exits 1 if any harness found a crash, timeout or memory blow-up (the inputs
stay in ``fuzz/.crashes/``), so ``make fuzz`` fails like a test would.

Limits passed to libFuzzer: ``-timeout`` (seconds per input), ``-rss_limit_mb``
and ``-malloc_limit_mb``; the harness itself checks the connection's buffer
against ``max_message_size`` after every read.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
HARNESSES = {
    "server_role": HERE / "fuzz_server_role.py",
    "client_role": HERE / "fuzz_client_role.py",
}
_STATS = re.compile(
    r"^#(?P<execs>\d+)\s+(?P<kind>\w+)\s+cov: (?P<cov>\d+) ft: (?P<ft>\d+) "
    r"corp: (?P<corp>\d+)/\S+.*?exec/s: (?P<rate>\d+)",
    re.MULTILINE,
)


@dataclasses.dataclass
class Result:
    """One harness run, as the summary table shows it."""

    harness: str
    seconds: float
    returncode: int
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    crashes: tuple[pathlib.Path, ...] = ()
    stalls: tuple[pathlib.Path, ...] = ()

    @property
    def ok(self) -> bool:
        # A timeout that replays fast was the machine stalling, not the parser.
        only_stalls = bool(self.stalls) and set(self.crashes) <= set(self.stalls)
        return (self.returncode == 0 or only_stalls) and not set(self.crashes) - set(self.stalls)

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


def libfuzzer_args(args: argparse.Namespace, harness: str) -> list[str]:
    corpus = HERE / ".corpus" / harness
    seeds = HERE / ".seeds" / harness
    corpus.mkdir(parents=True, exist_ok=True)
    return [
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-malloc_limit_mb={args.malloc_limit_mb}",
        f"-dict={HERE / 'pgwire.dict'}",
        f"-artifact_prefix={HERE / '.crashes'}/{harness}-",
        "-print_final_stats=1",
        str(corpus),
        str(seeds),
    ]


def run_one(args: argparse.Namespace, harness: str) -> subprocess.Popen[bytes]:
    log = HERE / ".logs" / f"{harness}.log"
    cmd = [sys.executable, str(HARNESSES[harness]), *libfuzzer_args(args, harness)]
    print(f"[{harness}] {' '.join(cmd)}\n[{harness}] log: {log}", flush=True)
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)


def _artifacts(harness: str) -> set[pathlib.Path]:
    return set((HERE / ".crashes").glob(f"{harness}-*"))


def summarize(
    harness: str, proc: subprocess.Popen[bytes], started: float, before: set[pathlib.Path]
) -> Result:
    proc.wait()
    text = (HERE / ".logs" / f"{harness}.log").read_text(errors="replace")
    result = Result(harness, time.monotonic() - started, proc.returncode)
    stats = list(_STATS.finditer(text))
    if stats:
        last = stats[-1]
        result.execs = int(last["execs"])
        result.cov, result.ft, result.corpus = int(last["cov"]), int(last["ft"]), int(last["corp"])
    done = re.search(r"Done (\d+) runs in (\d+) second", text)
    if done:
        result.execs, result.seconds = int(done[1]), max(int(done[2]), 1)
    result.crashes = tuple(sorted(_artifacts(harness) - before))
    result.stalls = tuple(p for p in result.crashes if "-timeout-" in p.name and _replays_fast(p))
    if result.stalls:
        print(f"[{harness}] timeouts that replay in under {STALL_SECONDS} s (the machine "
              f"stalled; kept for inspection): {[str(p) for p in result.stalls]}")  # fmt: skip
    if not result.ok:
        tail = text[text.find("==") :] if "==" in text else text[-3000:]
        print(f"[{harness}] FAILED (exit {proc.returncode}):\n{tail[-6000:]}", flush=True)
    return result


#: A timeout input that replays faster than this, uninstrumented, is a stall.
STALL_SECONDS = 2.0


def _replays_fast(path: pathlib.Path) -> bool:
    """Replay a timeout input in a fresh process: a real hang hangs again.

    On a loaded machine (other test suites paging memory in and out) libFuzzer
    reported 29 s "native code" timeouts for inputs that take 0.1 s; failing
    the run on those would make ``make fuzz`` cry wolf.
    """
    started = time.monotonic()
    try:
        subprocess.run(
            [sys.executable, __file__, "--repro", str(path)],
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return False
    # The interpreter's start-up and imports count too; allow a second for them.
    return time.monotonic() - started < STALL_SECONDS + 1.0


def repro(path: pathlib.Path, harness: str | None) -> int:
    """Replay one input without libFuzzer, for a readable traceback."""
    sys.path.insert(0, str(HERE))
    import _drive

    import pgsansio

    name = harness or next((h for h in HARNESSES if path.name.startswith(h)), None)
    if name is None:
        print("say which harness with --harness", file=sys.stderr)
        return 2
    role = pgsansio.SERVER if name == "server_role" else pgsansio.CLIENT
    data = path.read_bytes()
    if data:
        print(f"{name}: {_drive.Scenario.from_byte(role, data[0])}")
    print(f"stream: {data[1:]!r}")
    try:
        _drive.check(role, data)
    except Exception:
        traceback.print_exc()
        return 1
    print("no failure: the input passes every invariant")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per harness")
    parser.add_argument("--harness", action="append", choices=sorted(HARNESSES))
    parser.add_argument("--parallel", action="store_true", help="run the harnesses at once")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input, bytes")
    parser.add_argument("--timeout", type=int, default=20, help="seconds per input")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--malloc-limit-mb", type=int, default=64)
    parser.add_argument("--repro", type=pathlib.Path, help="replay one input and exit")
    args = parser.parse_args(argv)
    if args.repro:
        return repro(args.repro, args.harness[0] if args.harness else None)

    sys.path.insert(0, str(HERE))
    import seeds

    for sub in (".crashes", ".logs", ".seeds"):
        (HERE / sub).mkdir(exist_ok=True)
    counts = seeds.write_seeds(HERE / ".seeds")
    print(f"seeds: {counts}", flush=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")

    results = []
    names = args.harness or list(HARNESSES)
    if args.parallel:
        started = time.monotonic()
        procs = [(h, _artifacts(h), run_one(args, h)) for h in names]
        results = [summarize(h, p, started, before) for h, before, p in procs]
    else:
        for h in names:
            started, before = time.monotonic(), _artifacts(h)
            results.append(summarize(h, run_one(args, h), started, before))

    print(f"\n{'harness':<12} {'seconds':>7} {'execs':>9} {'exec/s':>7} {'cov':>5} "
          f"{'ft':>6} {'corpus':>6}  result")  # fmt: skip
    for r in results:
        found = [str(c) for c in r.crashes if c not in r.stalls]
        verdict = "ok" if r.ok else f"FAIL: {', '.join(found) or r.returncode}"
        if r.stalls:
            verdict += f" ({len(r.stalls)} stall timeout(s), stopped early)"
        print(
            f"{r.harness:<12} {r.seconds:>7.0f} {r.execs:>9} {r.rate:>7.0f} {r.cov:>5} "
            f"{r.ft:>6} {r.corpus:>6}  {verdict}"
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
