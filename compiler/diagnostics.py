"""Diagnostics: source spans, error and warning records, and their rendering.

Every stage reports problems through a :class:`Reporter`; a stage that found
errors ends with :meth:`Reporter.raise_if_errors`, which raises one
:class:`CompileError` carrying every diagnostic found so far. Users see them
rendered as ``file:line:col: error: message``, the source line and a caret.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable

from .record import Record


class Span(Record):
    """A region of a source file: 1-based lines and columns, end column exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Code(enum.StrEnum):
    """Stable identifiers of every kind of diagnostic (listed in docs/diagnostics.md)."""

    SYNTAX = "E001"
    UNKNOWN_NAME = "E002"
    DUPLICATE_NAME = "E003"
    INDEX = "E004"
    EXPRESSION = "E005"
    PARAMETER = "E006"
    UNKNOWN_OP = "E007"
    OP_ARGUMENT = "E008"
    SHAPE = "E009"
    NEVER_WRITTEN = "E010"
    NO_INPUTS = "E011"
    NO_OUTPUTS = "E012"
    CYCLE = "E013"
    MACHINE = "E014"
    SOURCE = "E015"
    TIME = "E016"
    IMPORT = "E017"
    SUBMACHINE = "E018"
    SEQUENCE = "E019"
    SOLVE = "E020"
    INFERENCE = "E021"
    SIZE = "E022"
    UNREACHED_OUTPUT = "W101"
    UNREAD_INPUT = "W102"
    LINEAR_CYCLE = "W103"
    UNCHECKED_MACHINE = "W104"


class Note(Record):
    """A secondary location that explains a diagnostic."""

    message: str
    span: Span | None = None


class Diagnostic(Record):
    """One problem found in a source file."""

    severity: Severity
    code: Code
    message: str
    span: Span | None = None
    notes: tuple[Note, ...] = ()
    hint: str | None = None

    def render(self, sources: dict[str, str] | None = None) -> str:
        """``file:line:col: error: message``, the source line, a caret, then notes and hint."""
        text = _render_located(self.severity.value, self.message, self.span, sources)
        lines = [text]
        for note in self.notes:
            lines.append(_render_located("note", note.message, note.span, sources))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """The diagnostic as plain JSON data (``machc check --format json``).

        Keys: ``file, line, column, end_line, end_column`` (all None without a
        place), ``severity, code, message, hint`` and ``notes``, a list of
        ``{file, line, column, end_line, end_column, message}``.
        """
        return {
            **_place(self.span),
            "severity": self.severity.value,
            "code": self.code.value,
            "message": self.message,
            "hint": self.hint,
            "notes": [{**_place(note.span), "message": note.message} for note in self.notes],
        }


def _place(span: Span | None) -> dict[str, object]:
    keys = ("file", "line", "column", "end_line", "end_column")
    return {key: None if span is None else getattr(span, key) for key in keys}


@functools.lru_cache(maxsize=8)
def _lines(text: str) -> list[str]:
    """The lines of a source as the parser counts them: by \\n alone (not \\x1c, \\u2028)."""
    return text.split("\n")


SHOWN_LINE = 160  # a longer source line is shown as a window of this many characters


def _render_located(
    kind: str, message: str, span: Span | None, sources: dict[str, str] | None
) -> str:
    if span is None:
        return f"{kind}: {message}"
    head = f"{span}: {kind}: {message}"
    text = (sources or {}).get(span.file)
    if text is None:
        return head
    lines = _lines(text)
    if not 1 <= span.line <= len(lines):
        return head
    line = lines[span.line - 1].removesuffix("\r")
    column = span.column
    end = span.end_column if span.end_line == span.line else len(line) + 1
    if len(line) > SHOWN_LINE:  # a window of the line around the place
        start = max(0, min(column - 1 - SHOWN_LINE // 2, len(line) - SHOWN_LINE))
        shown = line[start : start + SHOWN_LINE]
        prefix = "..." if start else ""
        suffix = "..." if start + SHOWN_LINE < len(line) else ""
        column, end = column - start + len(prefix), end - start + len(prefix)
        line = prefix + shown + suffix
        end = min(end, len(prefix) + len(shown) + 1)
    # Keep tabs in the caret line's indent so the caret sits under the right character.
    indent = "".join(ch if ch == "\t" else " " for ch in line[: column - 1])
    width = max(1, min(end, len(line) + 1) - column)
    return f"{head}\n    {line}\n    {indent}^{'~' * (width - 1)}"


def _position(diagnostic: Diagnostic) -> tuple[str, int, int]:
    span = diagnostic.span
    return ("", 0, 0) if span is None else (span.file, span.line, span.column)


def render_all(diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None) -> str:
    return "\n".join(d.render(sources) for d in diagnostics)


class CompileError(Exception):
    """Raised when a source has errors; carries every diagnostic found (warnings included),
    up to :data:`MAX_DIAGNOSTICS`; ``omitted`` counts the errors found beyond those."""

    def __init__(
        self,
        diagnostics: list[Diagnostic],
        sources: dict[str, str] | None = None,
        omitted: int = 0,
    ):
        self.diagnostics = diagnostics
        self.sources = sources or {}
        self.omitted = omitted
        text = render_all(diagnostics, self.sources)
        if omitted:
            text += f"\n... and {omitted} more error{'s' if omitted != 1 else ''}"
        super().__init__(text)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]


MAX_DIAGNOSTICS = 200  # diagnostics kept for one compilation; the errors beyond are counted


class Reporter:
    """Collects diagnostics for one compilation; drops repeats of one problem at one place."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self._seen: set[tuple[Code, Span | None, str]] = set()
        self._errors = 0  # every error reported, repeats included
        self.omitted = 0  # errors beyond MAX_DIAGNOSTICS, counted and not kept

    def error(self, code: Code, message: str, span: Span | None, **extra) -> None:
        self._add(
            Diagnostic(severity=Severity.ERROR, code=code, message=message, span=span, **extra)
        )

    def warning(self, code: Code, message: str, span: Span | None, **extra) -> None:
        self._add(
            Diagnostic(severity=Severity.WARNING, code=code, message=message, span=span, **extra)
        )

    def add(self, diagnostic: Diagnostic) -> None:
        """Report a diagnostic made elsewhere (another file's, or one with notes added)."""
        self._add(diagnostic)

    def _add(self, diagnostic: Diagnostic) -> None:
        if diagnostic.severity is Severity.ERROR:
            self._errors += 1
        # NOTE: a mistake inside a loop body is found once per iteration; report it once.
        # The key leaves out the loop variable's value that messages may mention.
        key = (diagnostic.code, diagnostic.span, diagnostic.message.split(" (with ")[0])
        if key not in self._seen:
            self._seen.add(key)
            if len(self.diagnostics) >= MAX_DIAGNOSTICS:
                self.omitted += diagnostic.severity is Severity.ERROR
                return
            self.diagnostics.append(diagnostic)

    @property
    def error_count(self) -> int:
        """Errors reported so far, repeats included: a stage that compares counts before
        and after sees every error it found, even one already reported elsewhere (a
        machine's error found again where the machine is used as an edge)."""
        return self._errors

    @property
    def has_errors(self) -> bool:
        return self.error_count > 0

    def sorted(self) -> list[Diagnostic]:
        """The diagnostics in source order (those without a place first)."""
        return sorted(self.diagnostics, key=_position)

    def raise_if_errors(self, sources: dict[str, str] | None = None) -> None:
        if self.has_errors:
            raise CompileError(self.sorted(), sources, self.omitted)

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]
