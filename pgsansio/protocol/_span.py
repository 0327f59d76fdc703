"""Spans: runs of whole messages that a proxy forwards as one piece.

``Connection.next_span`` reads them and ``Connection.send_span`` forwards them; see
there. DataRow and CopyData, the bulk of a result set or a COPY, are framed and
counted but not decoded.
"""

from __future__ import annotations

import struct

from . import _events as ev
from ._readers import BACKEND_READERS

__all__ = ["Span", "backend_span"]

_hdr = struct.Struct("!ci").unpack_from


class Span:
    """A run of whole messages, as received, ready to forward in one write.

    Attributes:
        data: the messages' bytes, exactly as they arrived.
        events: the decoded messages, except DataRow and CopyData, whose
            bodies the pooler never needs (they stay inside ``data``).
        offsets: where each of ``events`` starts in ``data``, so a proxy can
            splice in a rewritten message.
        bulk: how many DataRow/CopyData messages were passed over.
    """

    __slots__ = ("bulk", "data", "events", "offsets")

    def __init__(
        self, data: bytes, events: list[ev.Event], offsets: list[int], bulk: int = 0
    ) -> None:
        self.data = data
        self.events = events
        self.offsets = offsets
        self.bulk = bulk

    @property
    def ready(self) -> str | None:
        """The status of the last ReadyForQuery in the span, if any."""
        for event in reversed(self.events):
            if type(event) is ev.ReadyForQuery:
                return event.status
        return None

    def __repr__(self) -> str:
        names = ",".join(type(e).__name__ for e in self.events)
        return f"Span({len(self.data)} bytes, bulk={self.bulk}, events=[{names}])"


def backend_span(data: bytes) -> Span:
    """Whole server messages, as the span a client-role connection's ``next_span``
    reads from them while a request is outstanding: DataRows passed over, every
    other message decoded.

    Raises:
        LocalProtocolError: a message that does not decode (``data`` is assumed
            framed: a connection read it already).
    """
    events: list[ev.Event] = []
    offsets: list[int] = []
    bulk = 0
    pos = 0
    while pos < len(data):
        code, length = _hdr(data, pos)
        end = pos + 1 + length
        if code == b"D":
            bulk += 1
        else:
            events.append(BACKEND_READERS[code](data[pos + 5 : end]))
            offsets.append(pos)
        pos = end
    return Span(data, events, offsets, bulk)
