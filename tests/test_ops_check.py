"""``pgsansio check`` is honest: it prints the very warnings ``run`` logs.

Every PgCat key pgsansio accepts but does not act on is named with what happens
instead; a misspelt key's warning says which value is used in its place; with pglast
missing, a pool's ``query_parser_enabled`` is named. The list comes from one function,
:func:`pgsansio.engine.config_warnings`, which ``check`` prints and the engine logs.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from pgsansio.config import load_config, parse_config
from pgsansio.engine import Engine, Log, config_warnings

# The file: three shards, the sharding keys (implemented: no word about them),
# mirrors, worker_threads and the DNS cache (not implemented: each named).
SHARDED = textwrap.dedent(
    """\
    [general]
    host = "127.0.0.1"
    port = 0
    admin_username = "admin"
    admin_password = "admin-secret"
    worker_threads = 8
    dns_cache_enabled = true

    [pools.db]
    query_parser_enabled = true
    sharding_key_regex = '/\\* sharding_key: (\\d+) \\*/'
    shard_id_regex = '/\\* shard_id: (\\d+) \\*/'
    automatic_sharding_key = "data.id"

    [pools.db.users.0]
    username = "u"
    password = "p"
    pool_size = 5

    [pools.db.shards.0]
    database = "shard0"
    servers = [["127.0.0.1", 5999, "primary"]]
    mirrors = [["127.0.0.1", 5998, 0]]

    [pools.db.shards.1]
    database = "shard1"
    servers = [["127.0.0.1", 5999, "primary"]]

    [pools.db.shards.2]
    database = "shard2"
    servers = [["127.0.0.1", 5999, "primary"]]
    """
)

WORKER_THREADS = (
    "general.worker_threads: ignored: each pgsansio process serves its clients from one "
    "event loop (one CPU core), whatever this says; to use more cores, set workers = N "
    "(docs/workers.md)"
)
DNS_CACHE = (
    "general.dns_cache_enabled: ignored: there is no DNS cache; a server's host name is "
    "resolved by the system each time a server connection is opened (dns_max_ttl does not "
    "apply)"
)
MIRRORS = (
    "pools.db.shards.0.mirrors: ignored: mirroring is not implemented; no traffic is copied "
    "to these hosts"
)


def check(path: pathlib.Path, *, block_pglast: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``pgsansio check``; ``block_pglast`` runs it as if pglast were not installed."""
    code = "import sys\n"
    if block_pglast:
        code += "sys.modules['pglast'] = None\n"  # import pglast -> ImportError
    code += "from pgsansio.cli import main\nmain(sys.argv[1:])\n"
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, "-c", code, "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def warnings_of(stderr: str) -> list[str]:
    return [
        line.removeprefix("warning: ") for line in stderr.splitlines() if line[:8] == "warning:"
    ]


def test_check_names_what_is_not_done_and_not_what_is(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(SHARDED)
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert warnings_of(result.stderr) == [
        f"{path}: {WORKER_THREADS}",
        f"{path}: {DNS_CACHE}",
        f"{path}: {MIRRORS}",
    ]
    assert result.stderr.splitlines()[-1] == (
        f"{path}: OK (1 pool(s), 1 user(s), 3 shard(s), 3 warning(s))"
    )
    # Sharding is implemented: neither the regexes nor the automatic key are warned about.
    assert "shard_id_regex" not in result.stderr and "automatic_sharding_key" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "warning"),
    [
        (
            "autoreload = 15000",
            "general.autoreload: ignored: the file is not watched; send SIGHUP (or RELOAD on "
            "the admin console) to reload it",
        ),
        (
            "validate_config = true",
            "general.validate_config: ignored: servers are not contacted to validate the "
            "configuration at start or reload; a wrong server address or password shows in "
            "the log at the first login that needs that server",
        ),
    ],
)
def test_each_general_key_not_acted_on(setting: str, warning: str) -> None:
    text = SHARDED.replace("worker_threads = 8\ndns_cache_enabled = true", setting)
    assert parse_config(text, "x.toml").warnings[0] == f"x.toml: {warning}"


@pytest.mark.parametrize(
    ("setting", "warning"),
    [
        (
            "cleanup_server_connections = false",
            "ignored: a server connection is always cleaned with RESET ALL before reuse when a "
            "client changed a setting pgsansio cannot carry to its next server",
        ),
        (
            "log_client_parameter_status_changes = true",
            "ignored: parameter changes are not logged (they are still carried from server to "
            "server for each client)",
        ),
        (
            "db_activity_based_routing = true",
            "ignored: reads are not routed by recent writes (db_activity_init_delay, "
            "db_activity_ttl and table_mutation_cache_ms_ttl do nothing); they go where "
            "query_parser_read_write_splitting and default_role send them",
        ),
    ],
)
def test_each_pool_key_not_acted_on(setting: str, warning: str) -> None:
    text = SHARDED.replace(
        "query_parser_enabled = true\n", f"query_parser_enabled = true\n{setting}\n"
    )
    key = setting.split(" =", maxsplit=1)[0]
    assert f"x.toml: pools.db.{key}: {warning}" in parse_config(text, "x.toml").warnings


def test_the_defaults_that_match_what_we_do_are_not_warned_about() -> None:
    text = SHARDED.replace(
        "worker_threads = 8\ndns_cache_enabled = true",
        "dns_cache_enabled = false\n",
    ).replace('mirrors = [["127.0.0.1", 5998, 0]]\n', "")
    text = text.replace(
        "query_parser_enabled = true\n",
        "query_parser_enabled = true\ncleanup_server_connections = true\n"
        "db_activity_based_routing = false\n",
    )
    assert parse_config(text, "x.toml").warnings == ()


def test_a_typo_says_which_value_is_used_instead(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(SHARDED.replace("port = 0\n", "prot = 6432\n"))
    result = check(path)
    assert (
        f"{path}: general.prot: unknown key, ignored (did you mean port? port stays 5432, "
        "which a local PostgreSQL may already use)"
    ) in warnings_of(result.stderr)
    # Inherited values are the ones named: a pool's typo falls back to [general]'s value.
    text = SHARDED.replace("port = 0\n", "port = 0\nidle_timeout = 5000\n")
    text = text.replace(
        "query_parser_enabled = true\n", "query_parser_enabled = true\nidle_timout = 1\n"
    )
    assert (
        "x.toml: pools.db.idle_timout: unknown key, ignored (did you mean idle_timeout? "
        "idle_timeout stays 5000 milliseconds)"
    ) in parse_config(text, "x.toml").warnings
    # A secret is never shown, not even the value used instead.
    text = SHARDED.replace('password = "p"\n', 'password = "p"\npasword = "x"\n')
    assert (
        "x.toml: pools.db.users.0.pasword: unknown key, ignored (did you mean password? "
        "password is also set in this section)"
    ) in parse_config(text, "x.toml").warnings


def test_check_names_query_parser_enabled_without_pglast(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(SHARDED)
    result = check(path, block_pglast=True)
    assert result.returncode == 0, result.stderr
    parser = [w for w in warnings_of(result.stderr) if w.startswith("query_parser_enabled")]
    assert parser == [
        "query_parser_enabled is set (pool db) but the SQL parser cannot be loaded: "
        "read/write splitting and automatic_sharding_key (pgsansio.routing) need the pglast "
        "package, which is not installed: install it with pip install pglast (pgsansio's "
        "'routing' extra). Until it is, servers are chosen by default_role alone, and "
        "automatic_sharding_key finds no key"
    ]
    assert result.stderr.splitlines()[-1].endswith("4 warning(s))")


def test_the_engine_logs_the_same_list_at_start_and_reload(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(SHARDED)
    config = load_config(path)
    expected = config_warnings(config)
    engine = Engine(config, seed=1)
    logged = [e.message for e in engine.start(0.0) if isinstance(e, Log)]
    assert [m for m in logged if m in expected] == expected
    logged = [e.message for e in engine.reload(config, 1.0) if isinstance(e, Log)]
    assert [m for m in logged if m in expected] == expected


def test_run_logs_what_check_prints(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pgcat.toml"
    path.write_text(SHARDED)
    printed = warnings_of(check(path).stderr)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsansio", "run", str(path), "--frontend", "asyncio"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "CONFIG_FILE"},
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if " listening on " in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=30)
    logged = [
        line.split(" WARNING pgsansio: ", 1)[1]
        for line in [*lines, *rest.splitlines()]
        if " WARNING pgsansio: " in line
    ]
    assert [w.rstrip("\n") for w in logged] == printed
    # ... and its last line says why it stopped.
    assert rest.splitlines()[-1].endswith("pgsansio stopped: SIGINT; every client finished")
