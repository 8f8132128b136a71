"""The hypergraph IR: the contract between the stages.

``build`` produces a :class:`Program` (parameters bound, loops expanded, names
resolved); ``check`` adds a :class:`Structure` to each machine (shapes through
every pipeline, dependency order, depths, levels). All nodes are frozen,
closed (``extra="forbid"``) and serialise to JSON.
"""

from __future__ import annotations

import enum
import functools
import json

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .diagnostics import Span
from .record import Record
from .sizes import Size

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
# a tuple is a list written in the source: [3, 5]; op arguments may hold pairs: [[4, 0], 1]
Value = Scalar | tuple[Scalar | tuple[Scalar, ...], ...]
# a size is an int, or a Size written with size symbols bound at call time ([3, H, W])
Shape = tuple[int | Size, ...]


def format_value(value: object) -> str:
    """A value as .mach source writes it; strings JSON-escaped, so always one safe line."""
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def format_params(params: dict[str, Value]) -> str:
    """Parameter values as .mach source: ``w=32, p=0.1``."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


def machine_call(name: str, params: dict[str, Value]) -> str:
    """A machine used as an edge, as .mach source: ``ResBlock(w=32)``, or ``ResBlock``."""
    return f"{name}({format_params(params)})" if params else name


class Node(Record):
    """Every IR node: frozen, closed and made without validation (:mod:`record`)."""


class Role(enum.StrEnum):
    """What a space is to the outside: an argument of ``forward``, a result, or internal."""

    INPUT = "input"
    HIDDEN = "space"
    OUTPUT = "output"


class Space(Node):
    """A summand of the global space. ``shape`` is per sample: channel (feature) axis first.

    An *ids space* (``ids(n)``, ``ids`` is ``n``) holds one integer id in ``[0, n)`` per
    step; its shape is ``()``. As a space of the theory it is the one-hot vectors of size
    ``n``, which is how ``embedding`` (a linear map) reads it.

    ``shape`` is None only in what ``build`` makes, for a space declared without a shape
    (``space h``); ``check`` infers it from the edges that write the space, so every
    space of a checked program has its shape.
    """

    name: str
    shape: Shape | None
    role: Role
    ids: int | None = None
    span: Span


class WindowKind(enum.StrEnum):
    """Which steps a window read of a space covers, for the step ``t`` that reads it."""

    CAUSAL = "causal"  # k[0..t]: every step up to and including t
    SLIDING = "sliding"  # k[t-w..t]: the last w + 1 steps
    FULL = "full"  # k[..]: every step of the sequence


class Window(Node):
    """A read of a space at a window of steps; ``size`` is ``w`` of a sliding window."""

    kind: WindowKind
    size: int = 0

    def text(self, time: str) -> str:
        """The window as .mach source: ``0..t``, ``t-4..t``, ``..``."""
        if self.kind is WindowKind.CAUSAL:
            return f"0..{time}"
        if self.kind is WindowKind.SLIDING:
            return f"{time}-{self.size}..{time}"
        return ".."


class Port(Node):
    """One space an edge reads or writes, with where it was named.

    In a machine over time, ``delay`` is ``k`` for a read of ``h[t-k]`` and ``-k`` for a
    read of the future ``h[t+k]``; ``window`` is set for a read of a window of steps
    (``k[0..t]``); ``position`` marks a read of the time index itself (``t``, the step
    number as an ids space), whose ``space`` is the time index's name.
    """

    space: str
    delay: int = 0
    window: Window | None = None
    position: bool = False
    span: Span

    def text(self, time: str | None = "t") -> str:
        """The port as .mach source: ``h[2]``, ``h[2][t-1]``, ``h[t+1]``, ``k[0..t]``."""
        time = time or "t"
        if self.window is not None:
            return f"{self.space}[{self.window.text(time)}]"
        if self.delay > 0:
            return f"{self.space}[{time}-{self.delay}]"
        if self.delay < 0:
            return f"{self.space}[{time}+{-self.delay}]"
        return self.space


class Op(Node):
    """One stage of an edge's pipeline; ``kind`` is a key of :data:`machc.ops.OPS`.

    ``extra`` and ``extra_kw`` hold the arguments an op passes on unchecked (the
    constructor arguments of ``module``); every other op has them empty.
    """

    kind: str
    args: dict[str, Value]
    extra: tuple[Value, ...] = ()
    extra_kw: dict[str, Value] = Field(default_factory=dict)
    span: Span


class LoopSite(Node):
    """Which pass of which ``for`` loop made an edge: generated code may keep the loop
    (``compiler/loops.py``). ``run`` numbers the loops a machine ran (a loop inside a loop
    runs once per pass of the outer one); ``terms`` has, per input reference of the source,
    None for one space (``h[i-1]``) or the number of spaces a range gave (``h[1..i-1]``)."""

    run: int
    var: str
    value: int
    terms: tuple[int | None, ...]


class Edge(Node):
    """A hyperedge: reads the product of ``inputs``, applies ``ops``, splits into ``outputs``.

    A sub-machine edge has no ops: ``machine`` is the key of the machine instance
    whose resolvent it is (inputs and outputs map one to one onto that machine's).
    ``shares`` names the edge whose parameters this one reuses (``shared(edge)``).
    """

    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    ops: tuple[Op, ...]
    machine: str | None = None
    shares: str | None = None
    loop: LoopSite | None = None
    span: Span


class Solve(Node):
    """``solve z with anderson(tol=1e-5)``: how the cycle through ``space`` is solved.

    ``args`` holds every argument of the solver, defaults included (``tol``,
    ``max_iter``, ``backward`` and the solver's own).
    """

    space: str
    solver: str
    args: dict[str, Value]
    span: Span


class Machine(Node):
    """A machine with its parameters bound to concrete values.

    ``key`` names the generated class: the machine's name, with its parameter
    values appended when one program holds the machine with several parameter sets.
    """

    name: str
    key: str = ""
    params: dict[str, Value]
    time: str | None = None  # the time index of a machine over time
    spaces: tuple[Space, ...]
    edges: tuple[Edge, ...]
    solves: tuple[Solve, ...] = ()
    span: Span

    def space(self, name: str) -> Space:
        # NOTE: a lookup table, made once: a scan per lookup made check quadratic. It is
        # keyed on the spaces tuple itself, so a model_copy with new spaces makes a new one.
        spaces, table = self._space_table
        if spaces is not self.spaces:
            del self.__dict__["_space_table"]
            spaces, table = self._space_table
        return table[name]

    @functools.cached_property
    def _space_table(self) -> tuple[tuple[Space, ...], dict[str, Space]]:
        return self.spaces, {space.name: space for space in self.spaces}


class StageKind(enum.StrEnum):
    """How the edges of one stage of a machine over time run.

    ``all``: on every step at once (time folded into the batch; attention over the
    time axis); ``forward``: a recurrence through the past, step by step from the
    first step; ``backward``: a recurrence through the future, step by step from
    the last step.
    """

    ALL = "all"
    FORWARD = "forward"
    BACKWARD = "backward"


class Stage(Node):
    """Edges of a machine over time that run together, in dependency order."""

    kind: StageKind
    edges: tuple[str, ...]


class Cycle(Node):
    """A strongly connected part of a machine's hypergraph, solved to its fixed point.

    ``spaces`` are the unknowns (declaration order); ``edges`` the edges that read and
    write them (dependency order of the machine lists them together, in declaration
    order); ``solve`` says how.
    """

    spaces: tuple[str, ...]
    edges: tuple[str, ...]
    solve: Solve


class Relation(Node):
    """Two sizes that an edge needs equal (``kind`` ``==``), where that holds for some
    call-time sizes only (``2 * (H // 2) == H``: for even ``H``), or a size it needs at
    least as large as another (``>=``: ``H * W >= 2`` for instancenorm); generated code
    checks it on every call."""

    left: int | Size
    right: int | Size
    kind: str = "=="
    edge: str
    span: Span

    def holds(self, sizes: dict[str, int]) -> bool:
        left, right = (
            n.value(sizes) if isinstance(n, Size) else n for n in (self.left, self.right)
        )
        return left == right if self.kind == "==" else left >= right

    def text(self) -> str:
        return f"{self.left} {self.kind} {self.right}"


class CellRows(Node):
    """Rows ``start:stop`` of the weight (and bias) of edge ``edge``'s first ``linear``;
    ``bias``: whether this block brings those rows of the edge's bias (each bias row is
    brought once: by its input block, or by its hidden block where the edge reads only
    the hidden space)."""

    edge: str
    start: int
    stop: int
    bias: bool


class CellKind(enum.StrEnum):
    """A recurrent cell PyTorch runs over a whole sequence in one fused kernel."""

    RNN_TANH = "rnn_tanh"
    RNN_RELU = "rnn_relu"
    LSTM = "lstm"
    GRU = "gru"


class Cell(Node):
    """Rewrite ``cells``: a step loop whose edges are exactly one of PyTorch's cells.

    ``edges`` are the loop's edges (and a GRU's linear on the inputs, which runs on every
    step at once), in declaration order; ``inputs`` the spaces the cell reads at the same step
    (their concatenation is the kernel's input), ``hidden`` its hidden state ``h`` (read
    at ``h[t-1]``, or ``h[t+1]`` when ``reverse``), ``memory`` an LSTM's cell state ``c``,
    ``gates`` the spaces holding PyTorch's gates (LSTM i, f, g, o; GRU r, z, n).
    ``ih`` and ``hh`` are the rows of the kernel's input and hidden weights, in PyTorch's
    gate order (LSTM i, f, g, o; GRU r, z, n): columns on ``inputs`` and on ``hidden``
    of each edge's first linear.
    """

    kind: CellKind
    stage: int  # the step loop's index in the stages
    edges: tuple[str, ...]
    inputs: tuple[str, ...]
    hidden: str
    memory: str | None = None
    gates: tuple[str, ...] = ()
    reverse: bool = False
    ih: tuple[CellRows, ...]
    hh: tuple[CellRows, ...]


class Structure(Node):
    """What ``check`` learns about a machine of finite depth (and what rewrites decide)."""

    order: tuple[str, ...] = Field(description="edge names in dependency order, level by level")
    depth: dict[str, int] = Field(
        description="space name -> longest path from a space no edge writes"
    )
    levels: tuple[tuple[str, ...], ...] = Field(description="antichains of independent edges")
    shapes: dict[str, tuple[Shape, ...]] = Field(
        description="edge name -> shape entering each op, then the shape it produces"
    )
    cycles: tuple[Cycle, ...] = Field(
        default=(),
        description="solved cycles, in dependency order; their edges are one level",
    )
    delays: dict[str, int] = Field(
        default_factory=dict,
        description="machines over time: space name -> the most steps ago it is read (if read "
        "at an earlier step)",
    )
    windows: dict[str, int | None] = Field(
        default_factory=dict,
        description="machines over time: space name -> how many earlier steps a causal or "
        "sliding window reads (None: all of them)",
    )
    stages: tuple[Stage, ...] = Field(
        default=(),
        description="machines over time: the stages every edge runs in, in order",
    )
    sizes: dict[str, int] = Field(
        default_factory=dict,
        description="size symbol -> the smallest size for which every shape of the machine "
        "keeps a position; in the order the inputs bind them",
    )
    example_sizes: dict[str, int] = Field(
        default_factory=dict,
        description="size symbol -> its size in example inputs (every relation holds)",
    )
    relations: tuple[Relation, ...] = Field(
        default=(),
        description="relations between sizes that generated code checks on every call",
    )
    cells: tuple[Cell, ...] = Field(
        default=(),
        description="rewrite 'cells': step loops that run as one of PyTorch's fused "
        "recurrent kernels in forward (compiler/cells.py)",
    )
    regrouped: dict[str, int] = Field(
        default_factory=dict,
        description="rewrite 'regroup': edge name -> the index of its first linear or conv "
        "op, whose input forward keeps for the backward as the concatenated spaces, not "
        "their concatenation (compiler/regroup.py)",
    )
    regroup_columns: dict[str, int] = Field(
        default_factory=dict,
        description="rewrite 'regroup': edge name -> the columns of the concatenation the "
        "regrouped linear edges of vectors that start from the same space share in forward "
        "(the widest of them; compiler/regroup.py)",
    )
    causal: bool = Field(
        default=True,
        description="machines over time: no step depends on a later one (so the machine "
        "can run in chunks with state=)",
    )


class CheckedMachine(Node):
    machine: Machine
    structure: Structure


class Program(Node):
    """Every machine of one source file, and the instances of machines used as edges."""

    file: str
    machines: tuple[Machine, ...]
    instances: tuple[Machine, ...] = ()


class CheckedProgram(Node):
    """``machines``: the sub-machine instances first (dependencies before users), then the
    file's own machines."""

    file: str
    machines: tuple[CheckedMachine, ...]
