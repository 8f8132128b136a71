"""Imports: the files a .mach file brings in, and the machines each file can use.

``import "blocks.mach"`` names a file relative to the importing file, then
relative to each directory of the search path (``-I DIR``, ``search_path=``).
``import std.blocks`` names a module: ``std.*`` is machc's standard library
(``compiler/std/*.mach``), any other dotted name ``a.b`` is ``a/b.mach`` in
the search path. A file sees its own machines and those defined in the files
it imports (not what those files import in turn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import syntax as s
from .diagnostics import Code, CompileError, Note, Reporter, Span
from .parse import parse

STD_DIR = Path(__file__).with_name("std")


@dataclass(frozen=True)
class Visible:
    """A machine declaration as seen from some file: where it is defined."""

    decl: s.MachineDecl
    file: str  # the display path of the defining file


@dataclass
class Library:
    """Every file of one compilation, by display path, and what each one sees."""

    root: str
    files: dict[str, s.SourceFile] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    scopes: dict[str, dict[str, Visible]] = field(default_factory=dict)


def load_library(
    root: s.SourceFile,
    text: str,
    search_path: list[str | os.PathLike],
    reporter: Reporter,
    read=None,
) -> Library:
    """Read, parse and scope every file ``root`` imports, directly or not.

    Problems (a missing file, a cycle, a syntax error in an imported file, two
    machines of one name in one scope) are reported with the chain of imports.
    """
    from .driver import read_source

    read = read or read_source
    library = Library(root=root.path)
    library.files[root.path] = root
    library.sources[root.path] = text
    _Loader(library, [str(p) for p in search_path], reporter, read).visit(root.path, [])
    return library


class _Loader:
    def __init__(self, library: Library, search_path: list[str], reporter: Reporter, read):
        self.library = library
        self.search_path = search_path
        self.reporter = reporter
        self.read = read

    def visit(self, path: str, chain: list[tuple[str, Span]]) -> None:
        """Load the imports of ``path`` (whose syntax is loaded); ``chain``: how it was reached."""
        syntax = self.library.files[path]
        scope: dict[str, Visible] = {}
        for decl in syntax.machines:
            scope.setdefault(decl.name, Visible(decl, path))  # duplicates: reported by build
        self.library.scopes[path] = scope
        for imp in syntax.imports:
            target = self.locate(imp, path)
            notes = self.chain_notes(chain)
            if target is None:
                self.reporter.error(
                    Code.IMPORT,
                    f"cannot find {self.describe(imp)}",
                    imp.span,
                    notes=notes,
                    hint=self.searched(imp, path),
                )
                continue
            display, real = target
            stack = [p for p, _ in chain] + [path]
            if display in stack:
                cycle = " -> ".join([*stack[stack.index(display) :], display])
                self.reporter.error(
                    Code.IMPORT,
                    f"import cycle: {cycle}",
                    imp.span,
                    notes=notes,
                    hint="a file cannot import itself, directly or through others",
                )
                continue
            if display not in self.library.files and not self.load(display, real, imp, chain, path):
                continue  # it failed to load; reported
            self.bring(scope, display, imp, notes)

    def load(self, display: str, real: Path, imp: s.ImportDecl, chain, importer: str) -> bool:
        """Read and parse an imported file, then its own imports; False if that failed."""
        try:
            text = self.read(real)
        except OSError as exc:
            why = exc.strerror or str(exc)
            notes = self.chain_notes(chain)
            self.reporter.error(Code.IMPORT, f"cannot read {display}: {why}", imp.span, notes=notes)
            return False
        except CompileError as exc:  # not UTF-8
            self._adopt(exc, display, imp, chain, importer)
            return False
        self.library.sources[display] = text
        try:
            self.library.files[display] = parse(text, display)
        except CompileError as exc:
            self._adopt(exc, display, imp, chain, importer)
            return False
        self.visit(display, [*chain, (importer, imp.span)])
        return True

    def bring(self, scope: dict[str, Visible], display: str, imp: s.ImportDecl, notes) -> None:
        """The machines defined in ``display`` into ``scope``; a name taken twice is an error."""
        for decl in self.library.files[display].machines:
            seen = scope.get(decl.name)
            if seen is not None and (seen.file, seen.decl.name_span) != (display, decl.name_span):
                self.reporter.error(
                    Code.IMPORT,
                    f"machine {decl.name!r} from {display} clashes with the machine of "
                    f"that name from {seen.file}",
                    imp.span,
                    notes=(
                        Note(message="defined here", span=decl.name_span),
                        Note(message="and here", span=seen.decl.name_span),
                        *notes,
                    ),
                    hint="rename one of them",
                )
                continue
            scope[decl.name] = Visible(decl, display)

    def _adopt(self, exc: CompileError, display: str, imp, chain, path) -> None:
        """Errors of an imported file, with a note saying how it was imported."""
        self.library.sources.update(exc.sources)
        note = Note(message=f"in {display}, imported here", span=imp.span)
        for diagnostic in exc.diagnostics:
            extra = (note, *self.chain_notes(chain))
            self.reporter.add(diagnostic.model_copy(update={"notes": diagnostic.notes + extra}))

    def chain_notes(self, chain: list[tuple[str, Span]]) -> tuple[Note, ...]:
        return tuple(
            Note(message=f"{path} is imported here", span=span) for path, span in reversed(chain)
        )

    @staticmethod
    def describe(imp: s.ImportDecl) -> str:
        return f'"{imp.path}"' if imp.path is not None else imp.module

    def candidates(self, imp: s.ImportDecl, importer: str) -> list[tuple[str, Path]]:
        """(display path, real path) of each place the import may be, in order."""
        if imp.module is not None:
            parts = imp.module.split(".")
            if parts[0] == "std" and len(parts) == 2:
                return [(f"<std>/{parts[1]}.mach", STD_DIR / f"{parts[1]}.mach")]
            relative = os.path.join(*parts) + ".mach"
            return [
                (os.path.normpath(os.path.join(d, relative)), Path(d, relative))
                for d in self.search_path
            ]
        if os.path.isabs(imp.path):
            return [(os.path.normpath(imp.path), Path(imp.path))]
        base = os.path.dirname(importer) if not importer.startswith("<") else ""
        places = [
            os.path.join(base, imp.path),
            *(os.path.join(d, imp.path) for d in self.search_path),
        ]
        return [(os.path.normpath(p), Path(p)) for p in places]

    def locate(self, imp: s.ImportDecl, importer: str) -> tuple[str, Path] | None:
        for display, real in self.candidates(imp, importer):
            if display in self.library.files or real.is_file():
                return display, real
        return None

    def searched(self, imp: s.ImportDecl, importer: str) -> str:
        places = [display for display, _ in self.candidates(imp, importer)]
        if not places:
            return "no search path is set: add directories with -I DIR (or search_path=)"
        hint = "looked for " + ", ".join(places)
        if imp.module is not None and not imp.module.startswith("std."):
            hint += '; a path in quotes imports a file: import "blocks.mach"'
        if imp.module is not None and imp.module.startswith("std."):
            known = sorted(p.stem for p in STD_DIR.glob("*.mach"))
            hint = "the standard library has: " + ", ".join(f"std.{k}" for k in known)
        return hint
