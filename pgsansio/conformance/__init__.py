"""The tester's product: record real conversations, replay protocol scenarios, judge answers.

Everything here speaks the wire protocol through :mod:`pgsansio.protocol` alone and knows
nothing of the pooler (engine, frontends, config): a conformance suite that imported the
thing it judges could not be trusted to judge another pooler the same way.

* :mod:`.trace`: the recorded-conversation format (JSON Lines, byte-exact chunks).
* :mod:`.recorder`: the recording relay behind ``pgsansio record``.
* :mod:`.scenario`: the human-written scenario format (one message per line).
* :mod:`.runner`: plays scenarios against a target (and a reference) and judges them.
* :mod:`.report`: text, JSON and JUnit output.
* :mod:`.from_trace`: turns a recorded trace into a scenario.
* :mod:`.cli`: the ``pgsansio conformance`` commands (typer, imported only when run).

The built-in scenarios are package data in ``scenarios/``; ``docs/conformance.md``
documents the format.
"""
