# Every target installs what it needs from this repository's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint types unit coverage corpus fuzz bench-core bench bench-profile clean demo soak \
	compiled test-compiled unit-compiled unit-pure compiled-suite bench-core-compiled \
	dist dist-check docker-check pgbouncer-compare conformance conformance-corpus reliability fanout-soak

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PGSANSIO_COMPILE=0 $(PY) -m pip install --quiet -e '.[dev]'  # pure: no stale .so in the tree
	touch $(STAMP)

## make test: lint, format check, types and the whole default test suite, against the
## compiled build (mypyc) and, for the protocol, engine and fast-lane tests, pure Python too.
## Two at a time (2 cores): the pure-Python run beside the compile, then lint and types;
## then the whole suite against the compiled build. ~12 min on 2 quiet cores (estimate;
## docs/compiled.md has the pieces).
test: $(STAMP)
	rm -f .coverage
	$(MAKE) --no-print-directory -j2 --output-sync=target unit-pure compiled lint types PURE_REPORT=
	$(MAKE) --no-print-directory compiled-suite

lint: $(STAMP)
	$(VENV)/bin/ruff check pgsansio tests examples fuzz scripts bench
	$(VENV)/bin/ruff format --check pgsansio tests examples fuzz scripts bench

types: $(STAMP)
	$(VENV)/bin/mypy

## The tests that run against pure Python as well (the code setup.py compiles).
PURE_TESTS ?= tests/test_events.py tests/test_state.py tests/test_connection.py \
	tests/test_properties.py tests/test_corpus.py tests/test_auth.py tests/test_engine*.py \
	tests/test_fastlane.py tests/test_simulation.py tests/test_compiled.py
COMPILED := build/compiled
## Run anything against make compiled's copy: PYTHONSAFEPATH keeps the source tree in
## the current directory off sys.path (else `python -m` imports the .py files first), and
## PGSANSIO_TEST_BUILD makes tests/conftest.py stop if the wrong build is imported.
## Subprocesses (python -m pgsansio) inherit both variables.
COMPILED_ENV = PYTHONSAFEPATH=1 PYTHONPATH=$(CURDIR)/$(COMPILED)/lib:$(CURDIR)

## make unit: the tests without lint and types: the pure-Python run beside the compile,
## then the whole suite compiled. Branch coverage adds the two runs up: coverage cannot
## see inside compiled modules, so the pure run is what measures the protocol and the
## engine; the compiled run measures the rest (frontends, config, CLI) in make compiled's
## copy, which pyproject.toml's [tool.coverage.paths] counts as the source tree.
unit: $(STAMP)
	rm -f .coverage
	$(MAKE) --no-print-directory -j2 --output-sync=target unit-pure compiled PURE_REPORT=
	$(MAKE) --no-print-directory compiled-suite

## make unit-pure: PURE_TESTS against pure Python, with branch coverage (which triples
## its time: ~4 min instead of ~1.4 on a quiet core; PURE_COV= leaves it out)
PURE_REPORT ?= term:skip-covered
PURE_COV ?= --cov=pgsansio --cov-branch --cov-report=$(PURE_REPORT)
unit-pure: $(STAMP)
	PGSANSIO_TEST_BUILD=pure $(PY) -m pytest -q $(PURE_COV) $(PURE_TESTS) $(PYTEST_ARGS)

## make unit-compiled: build, then the whole suite against the compiled build
unit-compiled: compiled
	$(MAKE) --no-print-directory compiled-suite

compiled-suite:
	$(COMPILED_ENV) PGSANSIO_TEST_BUILD=compiled $(PY) -m pytest -q -p no:cacheprovider \
		--cov=$(CURDIR)/$(COMPILED)/lib/pgsansio --cov-branch --cov-append \
		--cov-report=term:skip-covered $(PYTEST_ARGS)

## make compiled: the mypyc build of the protocol core and the engine (setup.py says which
## modules) in build/compiled/lib, beside the source tree: the editable install stays pure
## Python. About 1.5 min of one core.
compiled: $(STAMP)
	rm -rf $(COMPILED)
	PGSANSIO_COMPILE=1 $(PY) setup.py --quiet build_py --build-lib $(COMPILED)/lib \
		build_ext --build-lib $(COMPILED)/lib --build-temp $(COMPILED)/temp
	$(COMPILED_ENV) $(PY) -c 'from pgsansio.cli import core_description as d; \
		print("protocol core:", d()); assert d().startswith("compiled with mypyc, the engine too")'

## make test-compiled: the protocol, engine and fast-lane tests against the compiled build
test-compiled: compiled
	$(COMPILED_ENV) PGSANSIO_TEST_BUILD=compiled $(PY) -m pytest -q -p no:cacheprovider \
		$(PURE_TESTS) tests/test_ops_cli.py $(PYTEST_ARGS)

## make coverage: branch coverage of the protocol package alone
coverage: $(STAMP)
	$(PY) -m pytest -q --cov=pgsansio.protocol --cov-branch --cov-report=term-missing $(PYTEST_ARGS)

## make corpus: re-record the traffic corpus against throwaway clusters
corpus: $(STAMP)
	$(PY) scripts/make_corpus.py --out tests/corpus

## make conformance: the protocol conformance suite against PostgreSQL 15 and 18, pgsansio
## (session and transaction mode, each frontend) and PgBouncer (both modes, when installed);
## writes the results table into docs/conformance.md (a few minutes)
conformance: $(STAMP)
	$(PY) scripts/conformance_matrix.py --json-dir build/conformance

## make conformance-corpus: re-convert tests/corpus into the corpus.scenario file
conformance-corpus: $(STAMP)
	$(PY) scripts/make_conformance_corpus.py

## make fuzz FUZZ_SECONDS=300: run the atheris harnesses
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

## make soak SIM_SOAK=40: the long randomized simulation of the engine
soak: $(STAMP)
	$(PY) -m pytest -q -m soak tests/test_simulation.py

## make pgbouncer-compare: the same pgbouncer.ini and client script against the real
## PgBouncer and pgsansio, compared (errors, SQLSTATEs, console columns)
pgbouncer-compare: $(STAMP)
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		(apt-get update -qq && apt-get install -y -qq pgbouncer)
	$(PY) -m pytest -q -s -m pgbouncer_compare tests/test_pgbouncer_side_by_side.py

## make reliability: socket-level reliability runs against the real daemon on every
## frontend, and PgBouncer side by side (docs/reliability.md)
## BEFORE=/path/to/other/tree adds that tree's pgsansio to the side-by-side figures.
reliability: $(STAMP)
	PGSANSIO_BEFORE_TREE=$(BEFORE) $(PY) -m pytest -q -s -m reliability tests/test_reliability.py tests/test_reliability_ledger.py

## make fanout-soak FANOUT_EXAMPLES=300: the cross-shard merge differential, long
FANOUT_EXAMPLES ?= 300
fanout-soak: $(STAMP)
	FANOUT_EXAMPLES=$(FANOUT_EXAMPLES) $(PY) -m pytest -q tests/test_sharding_fanout.py -k equal_one_database

## make bench-core: pytest-benchmark figures for the protocol core
bench-core: $(STAMP)
	$(PY) -m pytest -q bench/ --benchmark-enable --benchmark-only --benchmark-columns=min,mean,ops

## make bench-core-compiled: the same figures against the compiled build
bench-core-compiled: compiled
	$(COMPILED_ENV) $(PY) -m pytest -q -p no:cacheprovider bench/ --benchmark-enable \
		--benchmark-only --benchmark-columns=min,mean,ops

## make bench: pgbench through pgsansio (each frontend), PgBouncer and directly, in one
## run (~12 min, 14 when the engine compiles too; installs PgBouncer with apt-get when
## missing and root). pgsansio runs compiled (the mypyc build: `make compiled` on a copy
## of the tree) on every frontend and also as pure Python on uvloop; each target's
## `pgsansio --version` is checked against its label. '-S c200' and '-S -C c16' also run
## through a pgsansio with `workers = 2` (skipped, with a note, by a pgsansio without
## that key). CPU per transaction counts the pooler's whole process tree. Knobs:
## BENCH_SECONDS=n per pgbench run, BENCH_FRONTENDS=asyncio,uvloop, BENCH_COMPILED=all|none|
## list (frontends run compiled), BENCH_PURE=uvloop|all|none|list (frontends also run pure),
## BENCH_WORKERS=n (the workers target; 1: none), BENCH_ARGS=--quick (or --tree DIR,
## --baseline-tree DIR, --compiled-lib DIR: see bench/pooler_bench.py --help).
## Writes bench/results/latest.md (a summary table first) and latest.png (quick.md/.png
## with --quick). Sharding's routing cost (3 shards vs one pool, not in the default set):
## BENCH_ARGS='--workloads "-S sharded c32,-S sharded auto-key c32"'.
BENCH_SECONDS ?=
BENCH_FRONTENDS ?=
BENCH_COMPILED ?=
BENCH_PURE ?=
BENCH_WORKERS ?=
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/pooler_bench.py $(if $(BENCH_SECONDS),--seconds $(BENCH_SECONDS)) \
		$(if $(BENCH_FRONTENDS),--frontends $(BENCH_FRONTENDS)) \
		$(if $(BENCH_COMPILED),--compiled-frontends $(BENCH_COMPILED)) \
		$(if $(BENCH_PURE),--pure-frontends $(BENCH_PURE)) \
		$(if $(BENCH_WORKERS),--workers $(BENCH_WORKERS)) $(BENCH_ARGS)

## make bench-profile: py-spy profile of pgsansio (uvloop) under pgbench -S -c 32 (~1 min);
## bench/PROFILE.md quotes it. BENCH_ARGS passes options (--seconds, --mode prepared,
## --compiled for the mypyc build, --connect for -C ...).
bench-profile: $(STAMP)
	$(VENV)/bin/py-spy --version >/dev/null 2>&1 || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/pooler_profile.py $(BENCH_ARGS)

## make demo: the pooler on 127.0.0.1:6432 in front of a throwaway primary and replica
demo: $(STAMP)
	$(PY) -m pgsansio demo

## make dist: a wheel and an sdist in dist/ (install with
## pip install 'dist/pgsansio-<version>-<tags>.whl[cli,uvloop]'): compiled with mypyc where a
## C compiler is (cp3XX-<platform> tags), py3-none-any otherwise or with PGSANSIO_COMPILE=0
dist: $(STAMP)
	$(PY) -m build --outdir dist .

## make dist-check: build, install the wheel into a fresh venv, run pgsansio --version
## there (tests marked dist; needs the package index for the wheel's dependencies)
dist-check: $(STAMP)
	$(PY) -m pytest -q -m dist tests/test_ops_deploy.py

## make docker-check: build deploy/Dockerfile and serve a query through the container
## against a PostgreSQL container (needs a running Docker engine)
docker-check:
	sh deploy/docker-check.sh

clean:
	rm -rf dist build $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
	find pgsansio -name '*.so' -delete  # a compiled editable install's modules
