"""The pipeline end to end: parse → build → check → lower → emit, and loading the result."""

from __future__ import annotations

import contextlib
import gc
import os
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from . import ir
from .build import build
from .check import check
from .diagnostics import CompileError, Diagnostic, Reporter
from .imports import load_library
from .names import sanitize
from .parse import parse


@dataclass(frozen=True)
class Checked:
    """A source that passed every check: its IR and its warnings."""

    program: ir.CheckedProgram
    warnings: list[Diagnostic]
    source: str
    sources: dict[str, str]  # the text of every file read (imports included), for rendering


SearchPath = Sequence[str | os.PathLike] | None


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while machc runs, as it was afterwards.

    NOTE: scale. The stages make millions of objects that live until the end (the IR,
    the lines of generated code) and almost no cyclic garbage (a cycle that does become
    garbage waits for the collector, which runs again once this ends); left on, the
    collector walked the growing IR again and again: more than 40% of the time of
    building a 100,000-edge chain (docs/benchmarks.md, "Compile time at scale").
    Nested uses keep it off until the outermost one ends. The switch is the process's:
    another thread's collections wait meanwhile too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_source(
    text: str,
    filename: str = "<string>",
    params: Mapping[str, object] | None = None,
    search_path: SearchPath = None,
    machine: str | None = None,
) -> Checked:
    """Parse, build and check; raises :class:`CompileError` with every error (and warning).

    Imports are found relative to ``filename``, then in each directory of ``search_path``.
    ``machine`` is the machine asked for (default: the file's last): when it needs
    parameter values that it is given nowhere, that is an error, not a warning.
    """
    with collector_paused():
        reporter = Reporter()
        syntax = parse(text, filename)
        library = load_library(syntax, text, list(search_path or ()), reporter)
        reporter.raise_if_errors(library.sources)
        # Machines with errors are left out of the program; the others are still checked,
        # so that one run reports every error of the file.
        program = build(syntax, params or {}, reporter, library, asked=machine)
        checked = check(program, reporter)
        reporter.raise_if_errors(library.sources)
    return Checked(
        program=checked, warnings=reporter.sorted(), source=text, sources=library.sources
    )


def check_file(
    path: str | os.PathLike,
    params: Mapping[str, object] | None = None,
    search_path: SearchPath = None,
) -> Checked:
    return check_source(read_source(path), str(path), params, search_path)


class MachcWarning(UserWarning):
    """A warning diagnostic (the text is rendered with its source line), raised via ``warnings``."""


def compile_source(
    text: str,
    filename: str = "<string>",
    params: Mapping[str, object] | None = None,
    search_path: SearchPath = None,
    expand_loops: bool = False,
    rewrites: Iterable[str] | None = None,
) -> str:
    """The generated Python module for a .mach source text.

    Errors raise :class:`CompileError`; warnings go through :mod:`warnings` as
    :class:`MachcWarning` (use :func:`check_source` to get them as diagnostics).
    ``expand_loops`` writes every ``for`` loop out edge by edge instead of keeping it a
    loop over a ``ModuleDict`` (docs/language.md, "Loops in generated code");
    ``rewrites``: the rewrites for speed to apply (None: every one of
    ``machc.rewrite.REWRITES``; ``()``: none, the plain form; docs/performance.md).
    """
    return _compile(
        text, filename, params, search_path, 3, expand_loops=expand_loops, rewrites=rewrites
    )


def _compile(
    text: str,
    filename: str,
    params,
    search_path,
    stacklevel: int,
    expand_loops: bool = False,
    rewrites: Iterable[str] | None = None,
) -> str:
    checked = check_source(text, filename, params, search_path)
    for diagnostic in checked.warnings:
        warnings.warn(diagnostic.render(checked.sources), MachcWarning, stacklevel=stacklevel)
    from .emit import emit  # code generation (Jinja2) is loaded only when code is generated
    from .lower import lower
    from .rewrite import rewrite

    with collector_paused():
        view = lower(rewrite(checked.program, rewrites), expand_loops, checked.sources)
        # NOTE: scale. Filling the template needs no IR: it goes first (about half of the
        # memory of a 100,000-edge chain, docs/benchmarks.md).
        del checked
        return emit(view)


def compile_file(
    path: str | os.PathLike,
    params: Mapping[str, object] | None = None,
    search_path: SearchPath = None,
    expand_loops: bool = False,
    rewrites: Iterable[str] | None = None,
) -> str:
    """The generated Python module for a .mach file (warnings, ``expand_loops`` and
    ``rewrites`` as in :func:`compile_source`)."""
    return _compile_path(path, params, search_path, expand_loops, rewrites)


def _compile_path(path, params, search_path, expand_loops, rewrites) -> str:
    """:func:`_compile` of a file, for a public function called by the user's code (the
    warnings point there: _compile, this, that function, the user)."""
    return _compile(
        read_source(path),
        str(path),
        params,
        search_path,
        4,
        expand_loops=expand_loops,
        rewrites=rewrites,
    )


def read_source(path: str | os.PathLike) -> str:
    """A .mach file's text; a file that is not UTF-8 is a diagnostic, not a traceback."""
    with open(path, "rb") as file:  # (an OSError is the caller's to report)
        data = file.read()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        from .diagnostics import Code, Severity, Span

        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        span = Span(file=str(path), line=line, column=column, end_line=line, end_column=column + 1)
        diagnostic = Diagnostic(
            severity=Severity.ERROR,
            code=Code.SOURCE,
            message=f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            span=span,
        )
        raise CompileError([diagnostic], {str(path): data.decode("utf-8", "replace")}) from None


def load(
    path: str | os.PathLike,
    params: Mapping[str, object] | None = None,
    search_path: SearchPath = None,
    expand_loops: bool = False,
    rewrites: Iterable[str] | None = None,
) -> types.ModuleType:
    """Compile a .mach file and import the result as a module (no file is written);
    ``expand_loops`` and ``rewrites`` as in :func:`compile_source`.

    The generated source is registered with ``linecache``, so tracebacks and
    debuggers show its lines. The module's name holds a hash of the generated code, so
    loading the same machine again gives the same module; its models pickle with the
    code (``torch.save(model)``, multiprocessing), and unpickle in any process that
    has ``machc`` installed.
    """
    source = _compile_path(path, params, search_path, expand_loops, rewrites)
    from machc.runtime import loading  # torch: only here, where the module runs anyway

    stem = sanitize(os.path.splitext(os.path.basename(path))[0])
    name = loading.module_name(stem, source)
    return loading.module_from_source(name, loading.file_label(os.fspath(path), name), source)
