"""The global weight picture: which block of the global space maps into which.

Writing the network ``f`` as one map of the global space ``X = X_0 ⊕ ... ⊕ X_n``
onto itself, an edge that reads spaces ``A, B`` and writes ``C, D`` fills the
blocks ``(C, A), (C, B), (D, A), (D, B)`` (rows "to", columns "from"); every
other block is zero. A machine used as an edge is no different: it maps the
spaces it reads into the ones it writes (its inside has a picture of its own).
Spaces (rows and columns) are in declaration order, so a feed-forward machine
whose spaces are declared in dependency order comes out strictly block
lower-triangular.

With ``units`` there is one row and one column per unit (a channel of the
feature axis: the first axis of a space's shape); an edge fills all unit
pairs of its blocks. :func:`matrix_text` prints the picture for a terminal,
:func:`render` draws it with matplotlib (imported only there).

In a machine over time, a block may be filled only by reads of other steps:
of earlier ones (``h[t-1]``, marked ``~``, hatched ``///``) or of later ones
(``h[t+1]``, marked ``+``, hatched ``\\\\\\``); a block filled by a read of
a window of steps (attention's ``k[0..t]``, ``k[t-8..t]``, ``k[..]``) is marked
``=`` (cross-hatched). A block inside a solved cycle (``solve z with ...``; on or
above the diagonal, since a cycle maps a space back to itself) is marked ``@``
(circled). An ids space (``ids(n)``) is the one-hot vectors of size
``n``; the step number that a position embedding reads is no space, so it has
no row or column.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from . import ir
from .ir import format_params

MAX_UNITS = 200  # --units prints one row per unit: more than this is unreadable
MARK, DELAYED, FUTURE, WINDOW, SOLVED, BLANK = "#", "~", "+", "=", "@", "."
# What each mark but MARK means, for the legends (text, then pictures).
MEANINGS = {
    DELAYED: "reads an earlier time step",
    FUTURE: "reads a later time step",
    WINDOW: "reads a window of time steps",
    SOLVED: "inside a cycle solved to its fixed point",
}
HATCHES = {  # the hatch of a block in pictures, and the legend's name for it
    DELAYED: ("///", "hatched ///"),
    FUTURE: ("\\\\\\", "hatched \\\\\\"),
    WINDOW: ("xxx", "cross-hatched"),
    SOLVED: ("ooo", "circled"),
}
PALETTE = ("#ffffff", "#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2")
ROLE_WORDS = {ir.Role.INPUT: "in", ir.Role.HIDDEN: "hidden", ir.Role.OUTPUT: "out"}
FORMATS = ("png", "svg", "pdf")  # what `machc graph --matrix -o` writes, by file extension


class MatrixError(Exception):
    """The picture cannot be made as asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class Block:
    """One space: its rows (and columns) of the picture."""

    space: ir.Space
    size: int  # rows it takes: 1, or its unit count with ``units``

    @property
    def label(self) -> str:
        return f"{self.space.name} ({ROLE_WORDS[self.space.role]})"


@dataclass(frozen=True)
class WeightPicture:
    """The marks of one machine's picture, block by block: ``edges[(row, column)]``."""

    machine: ir.Machine
    blocks: tuple[Block, ...]
    units: bool
    edges: dict[tuple[str, str], tuple[str, ...]]  # (to, from) space names -> edge names
    # blocks filled only by reads of earlier time steps (machines over time)
    delayed: frozenset[tuple[str, str]] = frozenset()
    # blocks filled only by reads of later time steps, and blocks some window read fills
    future: frozenset[tuple[str, str]] = frozenset()
    windows: frozenset[tuple[str, str]] = frozenset()
    positions: tuple[str, ...] = ()  # edges that read the step number (no space: no column)
    solved: frozenset[tuple[str, str]] = frozenset()  # blocks inside a solved cycle

    def mark(self, key: tuple[str, str]) -> str:
        """The mark of the block ``(to, from)``: a solved cycle, a window, then the present
        step."""
        if key not in self.edges:
            return BLANK
        if key in self.solved:
            return SOLVED
        if key in self.windows:
            return WINDOW
        if key in self.delayed:
            return DELAYED
        return FUTURE if key in self.future else MARK

    @property
    def size(self) -> int:
        return sum(block.size for block in self.blocks)


def units_of(space: ir.Space) -> int:
    """The units (feature channels) of a space: the first axis of its per-sample shape.

    An ids space ``ids(n)`` has ``n``: as a space of the theory it is one-hot vectors.
    """
    if space.ids is not None:
        return space.ids
    return space.shape[0] if space.shape else 1


def picture(checked: ir.CheckedMachine, units: bool = False) -> WeightPicture:
    """The weight picture of one machine; raises :class:`MatrixError` for too many units."""
    machine = checked.machine
    if units:
        total = sum(units_of(space) for space in machine.spaces)
        if total > MAX_UNITS:
            raise MatrixError(
                f"machine {machine.name} has {total} units, more than {MAX_UNITS} for --units "
                "(one row and one column per unit); leave out --units for one row per space, "
                "or make the machine smaller with --set"
            )
    blocks = tuple(Block(s, units_of(s) if units else 1) for s in machine.spaces)
    edges: dict[tuple[str, str], list[str]] = {}
    now: set[tuple[str, str]] = set()  # blocks some read of the present step fills
    past: set[tuple[str, str]] = set()  # blocks some read of an earlier step fills
    windows: set[tuple[str, str]] = set()
    for edge in machine.edges:
        for target in edge.outputs:
            for source in edge.inputs:
                if source.position:  # the step number: no space, no block
                    continue
                key = (target.space, source.space)
                names = edges.setdefault(key, [])
                if edge.name not in names:
                    names.append(edge.name)
                if source.window is not None:
                    windows.add(key)
                elif not source.delay:
                    now.add(key)
                elif source.delay > 0:
                    past.add(key)
    return WeightPicture(
        machine=machine,
        blocks=blocks,
        units=units,
        edges={key: tuple(names) for key, names in edges.items()},
        delayed=frozenset(key for key in past if key not in now | windows),
        future=frozenset(key for key in edges if key not in now | windows | past),
        windows=frozenset(windows),
        positions=tuple(e.name for e in machine.edges if any(p.position for p in e.inputs)),
        solved=frozenset(
            (target, source)
            for cycle in checked.structure.cycles
            for target in cycle.spaces
            for source in cycle.spaces
            if (target, source) in edges
        ),
    )


def title(machine: ir.Machine) -> str:
    params = format_params(machine.params)
    over = f" over {machine.time}" if machine.time else ""
    return f"machine {machine.name}" + (f"({params})" if params else "") + over


def matrix_text(pictures: Sequence[WeightPicture]) -> str:
    """The pictures for a terminal, one after another, separated by a blank line."""
    return "\n\n".join(_one_text(p) for p in pictures) + "\n"


def _one_text(pic: WeightPicture) -> str:
    """Rows labelled ``name (role)``, a ``#`` where some edge maps the column into the row.

    Columns are grouped by space, the groups separated by two blanks; with
    units, a second header line numbers the units of each space (modulo 10).
    """
    widths = [max(b.size, len(b.space.name)) for b in pic.blocks]
    labels = [
        f"{b.label}" if not pic.units else f"{b.space.name}:{i} ({ROLE_WORDS[b.space.role]})"
        for b in pic.blocks
        for i in range(b.size)
    ]
    margin = max(len(label) for label in labels) + 2
    gap = "  "

    def row(cells: list[str]) -> str:
        return gap.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    what = ", by unit" if pic.units else ""
    lines = [f"{title(pic.machine)}{what}: rows to, columns from"]
    for mark, blocks in _special(pic):
        if blocks:
            lines[0] += f"; {mark} {MEANINGS[mark]}"
    lines.append(" " * margin + row([b.space.name for b in pic.blocks]))
    if pic.units:
        lines.append(
            " " * margin + row(["".join(str(i % 10) for i in range(b.size)) for b in pic.blocks])
        )
    k = 0
    for target in pic.blocks:
        for _ in range(target.size):
            cells = []
            for source in pic.blocks:
                mark = pic.mark((target.space.name, source.space.name))
                cells.append(mark * source.size)
            lines.append(labels[k].ljust(margin) + row(cells))
            k += 1
    if pic.positions:
        lines.append(_positions_note(pic))
    return "\n".join(lines)


def _positions_note(pic: WeightPicture) -> str:
    """Which edges also read the step number, which has no row or column."""
    reads = "reads" if len(pic.positions) == 1 else "read"
    time = pic.machine.time or "t"
    return f"{', '.join(pic.positions)} also {reads} the step number {time} (no space)"


def _special(pic: WeightPicture) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    """The marks other than MARK, each with the blocks that get it, in legend order."""
    return [
        (DELAYED, pic.delayed),
        (FUTURE, pic.future),
        (WINDOW, pic.windows),
        (SOLVED, pic.solved),
    ]


def render(pictures: Sequence[WeightPicture], fmt: str) -> bytes:
    """The pictures drawn side by side as ``fmt`` (png, svg, pdf) by matplotlib."""
    try:
        from matplotlib import rc_context
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise MatrixError(
            "drawing the matrix needs matplotlib: pip install matplotlib "
            "(or pip install 'machc[graph]'), or leave out -o to print it as text"
        ) from None
    import numpy as np

    sizes = [max(p.size, 1) for p in pictures]
    cell = 0.42 if not any(p.units for p in pictures) else 0.16
    width = sum(max(3.5, n * cell + 2.2) for n in sizes)
    height = max(3.0, max(n * cell for n in sizes) + 1.8)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, len(pictures), squeeze=False)[0]
    for ax, pic in zip(axes, pictures, strict=True):
        _draw(ax, pic, np, ListedColormap, Rectangle)
    buffer = io.BytesIO()
    # NOTE: no creation dates and no random SVG ids, so the same machine gives the same bytes.
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt, {})
    with rc_context({"svg.hashsalt": "machc"}):
        figure.savefig(
            buffer, format=fmt, dpi=110, metadata=metadata, bbox_inches="tight", pad_inches=0.15
        )
    return buffer.getvalue()


def _draw(ax, pic: WeightPicture, np, ListedColormap, Rectangle) -> None:  # noqa: N803
    edge_names = [e.name for e in pic.machine.edges]
    start, size = {}, {}
    for block in pic.blocks:
        start[block.space.name] = sum(size.values())
        size[block.space.name] = block.size
    grid = np.zeros((pic.size, pic.size))
    for (target, source), names in pic.edges.items():
        rows = slice(start[target], start[target] + size[target])
        cols = slice(start[source], start[source] + size[source])
        grid[rows, cols] = 1 + edge_names.index(names[0])
    colors = [PALETTE[0]] + [PALETTE[1 + i % (len(PALETTE) - 1)] for i in range(len(edge_names))]
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, aspect="equal")
    if pic.units:  # faint lines between units, stronger ones between spaces
        for k in range(1, pic.size):
            ax.axhline(k - 0.5, color="#e5e7eb", linewidth=0.4)
            ax.axvline(k - 0.5, color="#e5e7eb", linewidth=0.4)
    for k in list(start.values())[1:]:
        ax.axhline(k - 0.5, color="#6b7280", linewidth=0.9)
        ax.axvline(k - 0.5, color="#6b7280", linewidth=0.9)
    # The diagonal: a feed-forward machine has every mark strictly below it.
    ax.plot(
        [-0.5, pic.size - 0.5],
        [-0.5, pic.size - 0.5],
        color="#9ca3af",
        linewidth=0.8,
        linestyle=(0, (4, 3)),
    )
    center = {name: start[name] + (size[name] - 1) / 2 for name in start}
    names = [b.space.name for b in pic.blocks]
    ax.set_xticks(
        [center[n] for n in names], names, rotation=0 if max(map(len, names)) <= 4 else 90
    )
    ax.set_yticks([center[n] for n in names], [b.label for b in pic.blocks])
    ax.tick_params(length=0)
    ax.set_xlabel("from")
    ax.set_ylabel("to")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_xlim(-0.5, pic.size - 0.5)
    ax.set_ylim(pic.size - 0.5, -0.5)
    across = set()  # blocks across time: hatched, not solid
    for mark, blocks in _special(pic):
        for target, source in sorted(blocks):
            across.add((target, source))
            ax.add_patch(
                Rectangle(
                    (start[source] - 0.5, start[target] - 0.5),
                    size[source],
                    size[target],
                    facecolor="white",
                    edgecolor=colors[int(grid[start[target], start[source]])],
                    hatch=HATCHES[mark][0],
                    linewidth=0,
                )
            )
    for (target, source), edges in pic.edges.items():
        delayed = (target, source) in across
        ax.text(
            center[source],
            center[target],
            "\n".join(edges),
            ha="center",
            va="center",
            color="black" if delayed else "white",
            fontsize=8 if not pic.units else 7,
            fontweight="bold",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1} if delayed else None,
        )
    note = "".join(
        f"\n{HATCHES[mark][1]}: {MEANINGS[mark]}" for mark, blocks in _special(pic) if blocks
    )
    note += f"\n{_positions_note(pic)}" if pic.positions else ""
    ax.set_title(title(pic.machine) + note, fontsize=11)
