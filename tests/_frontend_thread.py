"""Run any frontend, with any engine, on a thread of its own (its own event loop).

The tests drive it from the main thread over real sockets; the frontend's runtime never
shares a loop with the test, so the same test body checks asyncio, uvloop, anyio on
asyncio, anyio on trio and curio alike.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from typing import Any

import pytest

from pgsansio.config.model import Config

FRONTEND_NAMES = ("asyncio", "uvloop", "anyio", "trio", "curio")
"""Every frontend the tests run against (``auto`` is one of the first two)."""


def frontend_params() -> list[Any]:
    """pytest params for every frontend; one whose package is missing is skipped, named."""
    needs = {"uvloop": "uvloop", "anyio": "anyio", "trio": "trio", "curio": "curio"}
    params = []
    for name in FRONTEND_NAMES:
        package = needs.get(name)
        marks = []
        if package is not None and importlib.util.find_spec(package) is None:
            # Every package is in the dev extra, so this skip never hides a failure here.
            marks.append(pytest.mark.skip(f"{package} is not installed (pgsansio[dev])"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


class FrontendThread:
    """One frontend serving ``engine`` on a thread; ``address`` once started."""

    def __init__(
        self, name: str, engine: Any, config: Config, *, config_path: str | None = None
    ) -> None:
        self.name = name
        self.engine = engine
        self.config = config
        self.config_path = config_path
        self.frontend: Any = None
        self.address: tuple[str, int] = ("", 0)
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fe-{name}")

    def _on_ready(self, address: tuple[str, int]) -> None:
        self.address = address
        self._ready.set()

    def _make(self, cls: Any) -> Any:
        self.frontend = cls(self.engine, self.config, config_path=self.config_path)
        return self.frontend.serve(self._on_ready, handle_signals=False)

    def _run(self) -> None:
        try:
            if self.name in ("asyncio", "uvloop"):
                from pgsansio.frontends.asyncio import AsyncioFrontend

                factory = None
                if self.name == "uvloop":
                    import uvloop

                    factory = uvloop.new_event_loop

                async def main() -> int:
                    code: int = await self._make(AsyncioFrontend)
                    return code

                with asyncio.Runner(loop_factory=factory) as runner:
                    self.exit_code = runner.run(main())
            elif self.name in ("anyio", "trio"):
                import anyio

                from pgsansio.frontends.anyio import make_frontend

                async def main_anyio() -> int:
                    code: int = await self._make(make_frontend)
                    return code

                backend = "trio" if self.name == "trio" else "asyncio"
                self.exit_code = anyio.run(main_anyio, backend=backend)
            else:
                import curio

                from pgsansio.frontends.curio import CurioFrontend

                async def main_curio() -> int:
                    code: int = await self._make(CurioFrontend)
                    return code

                self.exit_code = curio.run(main_curio())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 10) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the {self.name} frontend did not start")
        if self.error is not None:
            raise self.error
        if not self.address[1]:
            raise RuntimeError(f"the {self.name} frontend stopped before it listened")

    def signal(self, signum: int) -> None:
        """What the operator's signal does, delivered from this (another) thread.

        A frontend that has just exited on its own cannot take it; that is no error.
        """
        try:
            self.frontend.signal_threadsafe(signum)
        except Exception:
            self._thread.join(1)
            if self._thread.is_alive():
                raise

    def join(self, timeout: float) -> int | None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.exit_code

    def is_alive(self) -> bool:
        return self._thread.is_alive()
