"""Machines used as edges: one instance per machine and parameter values, and the
class name each instance gets."""

from __future__ import annotations

from collections.abc import Callable

from . import ir
from .diagnostics import Code, Note, Reporter, Span
from .imports import Library, Visible
from .names import CLASS_NAME_CLASHES, Namespace

MAX_MACHINE_NESTING = 32  # machines used as edges of machines used as edges of ...


class Composition:
    """The machines used as edges in one program: one instance per machine and parameters."""

    def __init__(self, library: Library | None, build_machine: Callable[..., ir.Machine | None]):
        self.library = library
        # build_machine(decl, reporter, composition, file): the builder of build.py
        self.build_machine = build_machine
        self.instances: dict[tuple, ir.Machine] = {}  # identity(machine) -> instance
        self.building: list[tuple[str, str]] = []  # (file, machine) being built, outermost first
        self.used: set[tuple[str, str]] = set()  # (file, machine) used as an edge somewhere
        self.keys = Namespace(CLASS_NAME_CLASHES)

    def scope(self, file: str) -> dict[str, Visible]:
        if self.library is None:
            return {}
        return self.library.scopes.get(file, {})

    def instantiate(
        self, visible: Visible, values: dict[str, ir.Value], used_at: Span, reporter: Reporter
    ) -> ir.Machine | None:
        """The instance of a machine with these parameter values (built once)."""
        call = ir.machine_call(visible.decl.name, values)
        self.used.add((visible.file, visible.decl.name))
        if len(self.building) >= MAX_MACHINE_NESTING:
            reporter.error(
                Code.SUBMACHINE,
                f"machines used as edges nest more than {MAX_MACHINE_NESTING} deep here ({call})",
                used_at,
            )
            return None
        note = Note(message=f"in {call}, used as an edge here", span=used_at)
        self.building.append((visible.file, visible.decl.name))
        try:
            noting = NotingReporter(reporter, note)
            machine = self.build_machine(visible.decl, noting, self, visible.file, values)
        finally:
            self.building.pop()
        if machine is None:
            return None
        identity = machine_identity(machine)
        if identity not in self.instances:
            self.instances[identity] = machine.model_copy(update={"key": self.key(machine)})
        return self.instances[identity]

    def key(self, machine: ir.Machine) -> str:
        """The class name of a machine: its name, or with its parameters when that is taken."""
        identity = repr(machine_identity(machine))
        hint = machine.name
        if not self.keys.has(identity) and self.keys.taken(machine.name):
            values = "_".join(f"{k}{ir.format_value(v)}" for k, v in machine.params.items())
            hint = f"{machine.name}_{values}" if values else machine.name
        return self.keys.name(identity, hint)


def machine_identity(machine: ir.Machine) -> tuple:
    """What makes two machines one class: the defining file, the name, the parameter values."""
    return (machine.span.file, machine.name, tuple(sorted(machine.params.items())))


class NotingReporter(Reporter):
    """Reports into another reporter, adding a note to every diagnostic (where it was used)."""

    def __init__(self, inner: Reporter, note: Note):
        super().__init__()
        self.inner = inner
        self.note = note

    def _add(self, diagnostic) -> None:
        self.inner.add(diagnostic.model_copy(update={"notes": (*diagnostic.notes, self.note)}))

    @property
    def error_count(self) -> int:
        return self.inner.error_count


def rename_refs(machine: ir.Machine, alias: dict[str, str]) -> ir.Machine:
    if not any(edge.machine in alias for edge in machine.edges):
        return machine
    edges = tuple(
        e.model_copy(update={"machine": alias[e.machine]}) if e.machine in alias else e
        for e in machine.edges
    )
    return machine.model_copy(update={"edges": edges})
