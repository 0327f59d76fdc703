"""pytest-benchmark figures for the protocol core (``make bench-core``).

Not collected by ``make test`` (``testpaths = tests``). Every workload of
``_workloads.py`` is one benchmark; each round gets a fresh connection built
outside the timing, so only the loop itself is measured. Compare each row
with the ``memory copy`` row of its group from the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _workloads
import pytest

WORKLOADS = _workloads.workloads()


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_core(benchmark: Any, workload: _workloads.Workload) -> None:
    benchmark.group = workload.group
    benchmark.extra_info.update(
        bytes=workload.nbytes,
        messages=workload.messages,
        source=_workloads.rows_stream()[0].source if workload.group == "rows" else "pgbench -S",
    )

    def setup() -> tuple[tuple[Callable[[], object]], dict[str, Any]]:
        return (workload.prepare(),), {}

    result = benchmark.pedantic(lambda run: run(), setup=setup, rounds=7, iterations=1)
    if "next_span" in workload.name:
        # Every received byte was forwarded, nothing more.
        assert result == workload.nbytes
