"""The conformance scenario format (version 1): one protocol message per line.

A scenario is what a client says and what it expects to hear, written so that a person
can read it next to the protocol documentation and a program can replay it against any
server or pooler. The idea is that of pgpool-II's ``pgproto`` scripts; the format is our
own. The full description, with an example, is ``docs/conformance.md``; in short::

    # pgsansio-conformance 1

    === extended.error-then-sync
    area: extended
    pooling: transaction
    description: After an error the server skips everything up to Sync, then answers it.

    > Parse "" "SELECT 1/0"
    > Bind "" ""
    > Execute "" 0
    > Parse "" "SELECT 1"
    > Sync
    < ParseComplete
    < BindComplete
    < ErrorResponse ERROR 22012 *
    < ReadyForQuery I

Decisions:

* **Text, line-oriented, versioned.** The first line names the format and its version;
  a reader refuses a newer version instead of misreading it. A file holds any number of
  scenarios, each opened by ``=== ID``.
* **Both directions are written the same way**: a message name and its fields as
  tokens. Tokens are ``"strings"`` (backslash escapes ``\\n \\t \\r \\\\ \\" \\xHH``),
  ``x'hex'`` bytes, ``NULL``, and bare words. ``>`` lines are sent, ``<`` lines are
  expected in that order, ``<?`` lines are expected if present.
* **What legitimately varies is rendered as a placeholder by the reader of answers**, not
  written as a wildcard by every scenario author: backend pid and key (``{pid}``,
  ``{key}``), type OIDs of created objects (``{oid}``, any OID from 16384 up), and the
  error position, detail and context (left out). ParameterStatus values are compared only
  where a scenario expects one, and ParameterStatus messages a scenario does not expect
  are ignored wherever they come (a pooler may report fewer or more of them). ``*`` in
  an expectation matches one token, or every remaining token when it is last; a
  ``*`` inside a quoted string matches any text there.
* **Two pooling verdicts**: ``pooling: session`` marks a scenario that needs one server
  session for its whole life (LISTEN, session SET, prepared statements across
  transactions, cancel by key); ``pooling: transaction`` one that must hold under
  transaction pooling too. A transaction pooler is judged only on the second kind.
* **Scenarios clean up after themselves**: ``{schema}`` in any string is replaced by a
  schema name of the scenario's own, which the runner creates before and drops (with
  everything in it) after, even when the scenario fails half-way.

This module only parses and renders; :mod:`pgsansio.conformance.runner` plays scenarios.
It uses the standard library and :mod:`pgsansio.protocol` only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import pathlib
import re
from collections.abc import Iterable
from importlib import resources
from typing import Final, Literal

from pgsansio import protocol as pg

__all__ = [
    "FORMAT_LINE",
    "POOLING",
    "VERSION",
    "Directive",
    "Expect",
    "Scenario",
    "ScenarioError",
    "Send",
    "Token",
    "builtin_scenarios",
    "differential_form",
    "line_matches",
    "load_scenarios",
    "parse_scenarios",
    "quote",
    "render_backend",
    "tokenize",
]

VERSION: Final = 1
"""The format version this module reads and writes."""

FORMAT_LINE: Final = f"# pgsansio-conformance {VERSION}"
"""The first line of every scenario file."""

POOLING: Final = ("session", "transaction")
"""``session``: needs a dedicated server session; ``transaction``: must hold under
transaction pooling as well."""

FIRST_USER_OID: Final = 16384
"""PostgreSQL's FirstNormalObjectId: OIDs from here up belong to objects created at run
time, which differ from one server to the next."""

_HEADER = re.compile(r"^#\s*pgsansio-conformance\s+(\d+)\s*$")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|x\'[0-9A-Fa-f ]*\'|\S+')
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)")
_BARE = re.compile(r"^[A-Za-z0-9_.:?{}()/=+,*<>$-]+$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_KEYS: Final = frozenset(
    {"area", "pooling", "description", "startup", "requires", "finding", "timeout", "origin"}
)
_SIMPLE_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "0": "\0"}


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; names the file and the line."""


TokenKind = Literal["str", "bytes", "null", "word"]


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """One token of a line: a quoted string, bytes, NULL or a bare word."""

    kind: TokenKind
    value: str | bytes | None

    @property
    def text(self) -> str:
        """The token's value as text (bare words and strings)."""
        return self.value if isinstance(self.value, str) else ""


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        raise ValueError(f"unknown escape \\{code}")

    return _ESCAPE.sub(one, body)


def tokenize(text: str) -> list[Token]:
    """Split one line's fields into tokens; raises ValueError for a malformed token."""
    tokens: list[Token] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if text[pos : m.start()].strip():
            raise ValueError(f"cannot read {text[pos : m.start()]!r}")
        pos = m.end()
        raw = m.group(0)
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                raise ValueError(f"unterminated string {raw!r}")
            tokens.append(Token("str", _unescape(raw[1:-1])))
        elif raw.startswith("x'") and raw.endswith("'") and len(raw) >= 3:
            hexdigits = raw[2:-1].replace(" ", "")
            if len(hexdigits) % 2:
                raise ValueError(f"odd number of hex digits in {raw}")
            tokens.append(Token("bytes", bytes.fromhex(hexdigits)))
        elif raw == "NULL":
            tokens.append(Token("null", None))
        elif raw.startswith('"'):
            raise ValueError(f"unterminated string {raw!r}")
        else:
            tokens.append(Token("word", raw))
    return tokens


def quote(text: str) -> str:
    """Write ``text`` as a quoted string token that :func:`tokenize` reads back."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127 or 0xDC80 <= ord(ch) <= 0xDCFF:
            # Surrogate-escaped bytes cannot be written as UTF-8: show them as \xHH.
            out.append(f"\\x{ord(ch) & 0xFF:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(data: bytes | None) -> str:
    """A field value: NULL, a quoted string when it is text, x'hex' when it is not."""
    if data is None:
        return "NULL"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "x'" + data.hex() + "'"
    if any(ord(c) < 32 and c not in "\n\t\r" for c in text):
        return "x'" + data.hex() + "'"
    return quote(text)


def _word(text: str) -> str:
    return text if text and _BARE.match(text) and text != "NULL" else quote(text)


def _oid(oid: int) -> str:
    return "{oid}" if oid >= FIRST_USER_OID else str(oid)


def _report(kind: str, event: pg.ErrorResponse | pg.NoticeResponse) -> str:
    # Severity V (not localized) when present, else S; position, detail, hint, context,
    # file/line/routine are left out: they vary between versions and builds.
    severity = event.get("V") or event.get("S") or "?"
    return f"{kind} {severity} {event.get('C') or '?'} {quote(event.get('M') or '')}"


def _version(v: int) -> str:
    return f"{v >> 16}.{v & 0xFFFF}"


def render_backend(event: pg.Event) -> str:
    """The canonical one-line form of a backend message, placeholders already in."""
    name = type(event).__name__
    if isinstance(event, pg.ErrorResponse):
        return _report("ErrorResponse", event)
    if isinstance(event, pg.NoticeResponse):
        return _report("NoticeResponse", event)
    if isinstance(event, pg.DataRow):
        return " ".join([name, *(_value(v) for v in event.values)])
    if isinstance(event, pg.CommandComplete):
        return f"{name} {quote(event.tag)}"
    if isinstance(event, pg.ReadyForQuery):
        return f"{name} {event.status}"
    if isinstance(event, pg.RowDescription):
        cols = []
        for f in event.fields:
            col = f"{f.name}:{_oid(f.type_oid)}"
            if f.type_modifier != -1:
                col += f"({f.type_modifier})"
            if f.format:
                col += ":b"
            cols.append(_word(col))
        return " ".join([name, *cols])
    if isinstance(event, pg.ParameterDescription):
        return " ".join([name, *(_oid(o) for o in event.type_oids)])
    if isinstance(event, pg.ParameterStatus):
        return f"{name} {_word(event.name)} {_word(event.value)}"
    if isinstance(event, pg.BackendKeyData):
        return f"{name} {{pid}} {{key}}"
    if isinstance(event, pg.NotificationResponse):
        return f"{name} {{pid}} {_word(event.channel)} {quote(event.payload)}"
    if isinstance(event, pg.CopyInResponse | pg.CopyOutResponse | pg.CopyBothResponse):
        return " ".join([name, str(event.format), *(str(c) for c in event.column_formats)])
    if isinstance(event, pg.CopyData):
        return f"{name} {_value(event.data)}"
    if isinstance(event, pg.FunctionCallResponse):
        return f"{name} {_value(event.result)}"
    if isinstance(event, pg.NegotiateProtocolVersion):
        return " ".join([name, _version(event.newest_version), *map(_word, event.unrecognized)])
    if isinstance(event, pg.SSLResponse | pg.GSSENCResponse):
        return f"{name} {bytes(event).decode('ascii')}"
    if isinstance(event, pg.AuthenticationSASL):
        return " ".join([name, *map(_word, event.mechanisms)])
    return name


def differential_form(line: str) -> str:
    """What differential mode compares: error and notice texts are left out.

    A pooler answering with its own words for the same SQLSTATE is not a difference in
    protocol behaviour; the severity and code are.
    """
    if line.startswith(("ErrorResponse ", "NoticeResponse ")):
        return " ".join(line.split(" ", 3)[:3])
    return line


def _token_matches(pattern: Token, got: Token) -> bool:
    if pattern.kind == "word" and pattern.value == "*":
        return True
    if pattern.kind != got.kind:
        return False
    if pattern.kind == "str" and isinstance(pattern.value, str) and "*" in pattern.value:
        return isinstance(got.value, str) and fnmatch.fnmatchcase(got.value, pattern.value)
    return pattern.value == got.value


def line_matches(pattern: list[Token], got: list[Token]) -> bool:
    """Whether a received message (rendered and tokenized) matches an expected line."""
    if pattern and pattern[-1] == Token("word", "*"):
        head = pattern[:-1]
        return len(got) >= len(head) and all(map(_token_matches, head, got))
    return len(pattern) == len(got) and all(map(_token_matches, pattern, got))


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """A ``>`` line: one frontend message (name and argument tokens)."""

    lineno: int
    name: str
    args: tuple[Token, ...]
    conn: str


@dataclasses.dataclass(frozen=True, slots=True)
class Expect:
    """A ``<`` (or optional ``<?``) line: one expected backend message."""

    lineno: int
    text: str
    pattern: tuple[Token, ...]
    conn: str
    optional: bool = False

    @property
    def name(self) -> str:
        return self.pattern[0].text if self.pattern else ""


@dataclasses.dataclass(frozen=True, slots=True)
class Directive:
    """A ``!`` line: something other than a message (sleep, cancel, login, ...)."""

    lineno: int
    name: str
    args: tuple[Token, ...]
    conn: str


Step = Send | Expect | Directive

_SEND_NAMES: Final = frozenset(
    {
        "Query",
        "Parse",
        "Bind",
        "Execute",
        "Describe",
        "Close",
        "Sync",
        "Flush",
        "Terminate",
        "CopyData",
        "CopyDone",
        "CopyFail",
        "FunctionCall",
        "Startup",
        "SSLRequest",
        "GSSENCRequest",
        "Raw",
    }
)
_DIRECTIVES: Final = frozenset({"sleep", "cancel", "login", "close", "nothing", "capture"})


@dataclasses.dataclass(slots=True)
class Scenario:
    """One scenario: its metadata and its steps in order."""

    id: str
    area: str
    pooling: str
    description: str
    steps: list[Step]
    startup: str = "login"
    requires: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    timeout: float | None = None
    """Seconds to wait for each answer; None: the runner's setting."""
    origin: str = ""
    path: str = ""
    lineno: int = 0

    @property
    def uses_schema(self) -> bool:
        """Whether the runner must create and drop the scenario's own schema."""
        return any(
            "{schema}" in t.value
            for s in self.steps
            if isinstance(s, Send)
            for t in s.args
            if isinstance(t.value, str)
        )

    @property
    def schema(self) -> str:
        return "pgconf_" + re.sub(r"[^a-z0-9]", "_", self.id)

    def finding_for(self, label: str) -> str | None:
        """The known finding recorded for targets labelled ``label``, if any."""
        for f in self.findings:
            who, _, why = f.partition(":")
            if fnmatch.fnmatchcase(label, who.strip()):
                return why.strip()
        return None


def _finish(s: Scenario | None, where: str, out: list[Scenario]) -> None:
    if s is None:
        return
    for key in ("area", "pooling", "description"):
        if not getattr(s, key):
            raise ScenarioError(f"{where}: scenario {s.id} has no '{key}:' line")
    if not s.steps:
        raise ScenarioError(f"{where}: scenario {s.id} has no messages")
    out.append(s)


def parse_scenarios(text: str, path: str = "<string>") -> list[Scenario]:
    """Parse every scenario of one file; raises :class:`ScenarioError` naming the line."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    m = _HEADER.match(lines[first]) if first is not None else None
    if m is None:
        raise ScenarioError(f"{path}: line 1: expected the header line {FORMAT_LINE!r}")
    if int(m.group(1)) > VERSION:
        raise ScenarioError(
            f"{path}: scenario format version {m.group(1)} is newer than this reader "
            f"(version {VERSION}); upgrade pgsansio"
        )
    out: list[Scenario] = []
    cur: Scenario | None = None
    conn = "main"
    in_meta = False
    assert first is not None
    for lineno, raw in enumerate(lines[first + 1 :], start=first + 2):
        line = raw.strip()
        where = f"{path}: line {lineno}"
        if not line or line.startswith("#"):
            in_meta = in_meta and not line
            continue
        if line.startswith("==="):
            _finish(cur, where, out)
            sid = line[3:].strip()
            if not _ID.match(sid):
                raise ScenarioError(f"{where}: scenario id {sid!r} must be lower case a-z0-9._-")
            cur = Scenario(sid, "", "", "", [], path=path, lineno=lineno)
            conn = "main"
            in_meta = True
            continue
        if cur is None:
            raise ScenarioError(f"{where}: text before the first '=== ID' line")
        if in_meta and re.match(r"^[a-z]+:", line):
            key, _, value = line.partition(":")
            _meta(cur, key, value.strip(), where)
            continue
        in_meta = False
        try:
            cur.steps.append(_step(line, lineno, conn))
        except ValueError as e:
            raise ScenarioError(f"{where}: {e}") from None
        step = cur.steps[-1]
        if isinstance(step, Directive) and step.name == "conn":
            cur.steps.pop()
            conn = step.args[0].text
            cur.steps.append(Directive(lineno, "use", step.args, conn))
    _finish(cur, f"{path}: end of file", out)
    ids = [s.id for s in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ScenarioError(f"{path}: duplicate scenario ids: {', '.join(sorted(dup))}")
    return out


def _meta(s: Scenario, key: str, value: str, where: str) -> None:
    if key not in _KEYS:
        raise ScenarioError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
    if key == "pooling" and value not in POOLING:
        raise ScenarioError(f"{where}: pooling must be session or transaction, not {value!r}")
    if key == "startup" and value not in ("login", "none"):
        raise ScenarioError(f"{where}: startup must be login or none, not {value!r}")
    if key == "requires":
        s.requires = tuple(value.split())
    elif key == "finding":
        s.findings = (*s.findings, value)
    elif key == "timeout":
        try:
            s.timeout = float(value)
        except ValueError:
            raise ScenarioError(f"{where}: timeout must be a number of seconds") from None
    else:
        setattr(s, key, value)


def _step(line: str, lineno: int, conn: str) -> Step:
    if line.startswith("@"):
        name = line[1:].strip()
        if not _ID.match(name):
            raise ValueError(f"connection name {name!r} must be lower case a-z0-9._-")
        return Directive(lineno, "conn", (Token("word", name),), conn)
    if line.startswith("<?"):
        mark, rest, optional = "<?", line[2:], True
    else:
        mark, rest, optional = line[:1], line[1:], False
    tokens = tokenize(rest)
    if not tokens or tokens[0].kind != "word":
        raise ValueError(f"expected a message name after {mark!r}")
    name = tokens[0].text
    if mark == ">":
        if name not in _SEND_NAMES:
            raise ValueError(f"unknown frontend message {name!r}")
        return Send(lineno, name, tuple(tokens[1:]), conn)
    if mark in ("<", "<?"):
        return Expect(lineno, rest.strip(), tuple(tokens), conn, optional)
    if mark == "!":
        if name not in _DIRECTIVES:
            known = ", ".join(sorted(_DIRECTIVES))
            raise ValueError(f"unknown directive {name!r} (known: {known})")
        return Directive(lineno, name, tuple(tokens[1:]), conn)
    raise ValueError("a line starts with '>', '<', '<?', '!', '@', '===' or '#'")


def load_scenarios(paths: Iterable[str | pathlib.Path]) -> list[Scenario]:
    """Read scenario files, and every ``*.scenario`` file of the directories given."""
    out: list[Scenario] = []
    for p in map(pathlib.Path, paths):
        files = sorted(p.rglob("*.scenario")) if p.is_dir() else [p]
        for f in files:
            try:
                text = f.read_text("utf-8")
            except OSError as e:
                raise ScenarioError(f"{f}: cannot read: {e.strerror}") from None
            out.extend(parse_scenarios(text, str(f)))
    return out


def builtin_scenarios() -> list[Scenario]:
    """The scenarios shipped inside the package (``pgsansio/conformance/scenarios``)."""
    out: list[Scenario] = []
    root = resources.files("pgsansio.conformance") / "scenarios"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".scenario"):
            out.extend(parse_scenarios(entry.read_text("utf-8"), f"scenarios/{entry.name}"))
    ids = [s.id for s in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ScenarioError(f"duplicate scenario ids: {', '.join(sorted(dup))}")
    return out
