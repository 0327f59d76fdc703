"""What the README's "Running it in production" ships: the systemd unit, the Dockerfile,
the example configuration, and the wheel ``make dist`` builds.

There is no Docker engine where these tests run: the Dockerfile is checked for what can
be checked without one (what it copies exists and is not ignored, the extras it
installs exist, it runs unprivileged and stops with SIGINT), and ``make docker-check``
(deploy/docker-check.sh) builds it and serves a query through it where Docker runs.
The wheel is built and installed into a fresh venv by ``make dist-check`` (marker
``dist``: it needs the package index for typer).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import venv

import pytest

from pgsansio import __version__
from pgsansio.config import load_config
from pgsansio.engine import config_warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "pgsansio.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_systemd_unit_runs_unprivileged_and_stops_gently() -> None:
    unit = unit_settings()
    assert unit["User"] == ["pgsansio"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ExecStartPre"] == ["/opt/pgsansio/bin/pgsansio check /etc/pgsansio/pgcat.toml"]
    assert unit["ExecStart"] == ["/opt/pgsansio/bin/pgsansio run /etc/pgsansio/pgcat.toml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # SIGINT drains for up to shutdown_timeout (60 s by default): systemd waits longer.
    assert unit["KillSignal"] == ["SIGINT"] and int(unit["TimeoutStopSec"][0]) > 60
    assert unit["RestartPreventExitStatus"] == ["78"]  # a bad file is not restarted in a loop
    assert int(unit["LimitNOFILE"][0]) >= 65536


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: pathlib.Path) -> None:
    # verify wants the programs to exist: point them at this interpreter's pgsansio.
    script = pathlib.Path(sys.executable).parent / "pgsansio"
    if not script.exists():
        pytest.skip(f"no pgsansio script next to {sys.executable}")
    text = (DEPLOY / "pgsansio.service").read_text()
    unit = tmp_path / "pgsansio.service"
    unit.write_text(text.replace("/opt/pgsansio/bin/pgsansio", str(script)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if "pgsansio.service" in line]
    assert result.returncode == 0 and ours == [], result.stderr


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    joined = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_the_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    copied = [
        args.split()[:-1] for word, args in dockerfile() if word == "COPY" and "--from" not in args
    ]
    sources = [source for sources in copied for source in sources]
    assert sources == ["pyproject.toml", "README.md", "LICENSE", "pgsansio"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_the_dockerfile_runs_unprivileged_with_existing_extras() -> None:
    steps = dockerfile()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (default_extras,) = [args for word, args in steps if word == "ARG" and "EXTRAS=" in args]
    for extra in default_extras.split("=", 1)[1].split(","):
        assert extra in extras
    assert ("USER", "10001") in steps
    assert ("STOPSIGNAL", "SIGINT") in steps
    assert ("ENTRYPOINT", '["pgsansio", "run"]') in steps
    assert ("CMD", '["/etc/pgsansio/pgcat.toml"]') in steps
    assert any(word == "HEALTHCHECK" and "6432" in args for word, args in steps)


def test_the_example_production_config_loads_without_warnings() -> None:
    config = load_config(DEPLOY / "pgcat.toml")
    assert config_warnings(config) == []
    assert config.general.port == 6432 and config.general.enable_prometheus_exporter


def test_the_docker_check_script_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n", str(DEPLOY / "docker-check.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert os.access(DEPLOY / "docker-check.sh", os.X_OK)


@pytest.mark.dist
def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("pgsansio-*.whl")
    # Compiled where the build can (mypy comes with the build requirements; a C
    # compiler and the Python headers must be there), else pure Python (setup.py).
    pure = wheel.name == f"pgsansio-{__version__}-py3-none-any.whl"
    assert pure or wheel.name.startswith(f"pgsansio-{__version__}-cp3"), wheel.name
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    # Nothing of this checkout on the path: the venv must stand on the wheel alone.
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONFIG_FILE")}
    subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", f"{wheel}[cli]"],
        check=True,
        timeout=600,
        cwd=tmp_path,
        env=clean_env,
    )
    version = subprocess.run(
        [str(bin_dir / "pgsansio"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert version.stdout.splitlines()[0] == f"pgsansio {__version__}"
    assert (
        "protocol core: pure Python"
        if pure
        else "protocol core: compiled with mypyc, the engine too (_connection.cpython-"
    ) in version.stdout, version.stdout
    check = subprocess.run(
        [str(bin_dir / "pgsansio"), "check", str(DEPLOY / "pgcat.toml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert check.returncode == 0, check.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lstrip("#").strip().lower()
    return "".join(ch for ch in text if ch.isalnum() or ch in " -_").replace(" ", "-")


def test_every_link_of_the_readme_and_docs_leads_somewhere() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    anchors = {
        page: {_slug(line) for line in page.read_text().splitlines() if line.startswith("#")}
        for page in pages
    }
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and where.suffix == ".md" and anchor not in anchors.get(where, set()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
