"""atheris harness: a CLIENT-role connection parsing what a server sends.

The connection has sent its StartupMessage; the fuzzed bytes are the
authentication exchange (the harness answers cleartext, MD5, GSS and SCRAM with
a real ScramClient), ParameterStatus/BackendKeyData/ReadyForQuery, then the
replies to a pipeline of requests: rows, COPY in/out/both, errors, notices,
notifications. The selector byte can also start the connection in the query
phase with simple, extended or mixed requests in flight.

Each input is fed whole, byte by byte and through ``next_span`` at split points
drawn from the input; it must parse or raise RemoteProtocolError (see ``_drive``).

Run through ``fuzz/run.py``; to replay one file: ``python fuzz/fuzz_client_role.py FILE``.
"""

from __future__ import annotations

import sys

import atheris

# Instrument the library only: coverage feedback from the standard library
# would drown the signal and halve the speed.
with atheris.instrument_imports(include=["pgsansio"]):
    import pgsansio

import _drive


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: one input, every feeding mode, every invariant."""
    _drive.check(pgsansio.CLIENT, data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
