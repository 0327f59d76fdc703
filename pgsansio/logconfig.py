"""Logging for the daemon: one line per record on stderr, as text or as JSON.

Shared by every frontend and command, so that ``pgsansio run`` logs the same way on
asyncio, uvloop or anything later. Timestamps are UTC with milliseconds and a ``Z``
(``2026-11-25T01:02:03.456Z INFO pgsansio: message``), because pooler logs are read
next to PostgreSQL's and an application's, often from machines in other time zones.
JSON lines (``{"ts": ..., "level": ..., "logger": ..., "message": ...}``) are for log
shippers; a traceback goes into an ``"exc"`` field instead of extra lines, so one
record stays one line.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Final, TextIO

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "TextFormatter", "configure_logging"]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")


def _utc_stamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC time> <LEVEL> <logger>: <message>``, then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_stamp(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; keys ``ts``, ``level``, ``logger``, ``message``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "ts": _utc_stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str = "info", fmt: str = "text", *, stream: TextIO | None = None
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt``.

    Replaces the root logger's handlers, so calling it twice does not double lines.

    Raises:
        ValueError: an unknown level or format.
    """
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; choose one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; choose one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
