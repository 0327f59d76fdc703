"""The ``NEED_DATA`` and ``PAUSED`` sentinels of ``Connection.next_event``.

They are classes with a metaclass (so ``repr`` prints the bare name, as h11's
sentinels do), and mypyc cannot compile a subclass of ``type``. They live here, in the
one protocol module the compiled build leaves as pure Python (see ``setup.py``), so
the rest of the package compiles unchanged; ``_connection`` re-exports them.
"""

from __future__ import annotations


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """``next_event`` found no whole message: call ``receive_data`` first."""


class PAUSED(metaclass=_Sentinel):
    """``next_event`` must wait for us to send something first (the SSL answer)."""
