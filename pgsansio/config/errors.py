"""The one exception every configuration reader raises.

Kept apart from the readers so that the pgcat.toml reader, the pgbouncer.ini reader and
the command line share it without importing each other.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A configuration file that cannot be used, and the one thing wrong with it.

    ``key`` is the dotted TOML path of the offending value, or ``[section] key`` in a
    pgbouncer.ini (``None`` when the file as a whole is at fault); ``line`` is set for
    TOML syntax errors, which have no key yet, and for every pgbouncer.ini error.
    """

    def __init__(
        self, path: str, key: str | None, problem: str, *, line: int | None = None
    ) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        self.line = line
        super().__init__(path, key, problem)

    def __str__(self) -> str:
        if self.key is not None and self.line is not None:
            return f"{self.path}:{self.line}: {self.key}: {self.problem}"
        if self.key is not None:
            return f"{self.path}: {self.key}: {self.problem}"
        if self.line is not None:
            return f"{self.path}: line {self.line}: {self.problem}"
        return f"{self.path}: {self.problem}"
