"""atheris harness: a SERVER-role connection parsing what a client sends.

The fuzzed bytes are startup packets (SSL/GSS/cancel requests, StartupMessage),
password and SASL messages (the harness plays the server, asking for trust,
cleartext, MD5 or SCRAM with a real ScramServer), then the query phase: simple
and extended query, COPY FROM STDIN, function calls. The selector byte can also
start the connection in the query phase, inside COPY IN, or discarding an
extended batch after an error.

Each input is fed whole, byte by byte and through ``next_span`` at split points
drawn from the input; it must parse or raise RemoteProtocolError (see ``_drive``).

Run through ``fuzz/run.py``; to replay one file: ``python fuzz/fuzz_server_role.py FILE``.
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
    _drive.check(pgsansio.SERVER, data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
