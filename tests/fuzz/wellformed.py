"""Random well-formed machines: sources that should compile and run.

A seeded :class:`random.Random` draws a machine the way a person would write
one, keeping track of every shape so that the result checks: spaces of
vectors, signals, images and volumes; edges with pipelines of ops from the
op table (:data:`machc.ops.OPS`) with plausible arguments; products of
several spaces, several outputs, contributions that add up, edges into
input spaces; arrays and ``for`` loops (chains, dense shortcuts, grids);
parameters used in sizes and ranges; machines used as edges, ``shared``,
imports of the standard library; machines over time with delays, reads
of the future, windows read by attention, token ids and positions;
hidden spaces and outputs that leave their shapes out where every edge that
writes them tells it (so that check infers it); and signals, images and
volumes whose sizes are known only at call time (``input img : [3, H, W]``),
with hidden shapes written in the symbols (``[8, H // 2, W // 2]``), strided
convolutions, pooling and upsampling that need relations between sizes
(``2 * (H // 2) == H``), and machines used as edges that bind symbols of
their own.

Not every draw checks (a few combinations are refused by design, such as a
recurrence through a sub-machine that keeps state): those are diagnostics,
which are fine outcomes too. The point is that most draws do, so that the
code generator and the generated modules get exercised.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from machc.equilibrium import SOLVERS
from machc.ops import OPS

Shape = tuple[int, ...]  # per sample, channels first (a spatial size may be a Dim)

SPACE_NAMES = "x y z h a b c d u v w s r p q m n o e f g k l i j".split()
EDGE_NAMES = (
    "enc dec mix proj skip head stem body cell read emit gate up down join fuse step".split()
)
ACTIVATIONS = [
    "relu",
    "relu6",
    "gelu",
    'gelu(approximate="tanh")',
    "silu",
    "mish",
    "hardswish",
    "tanh",
    "sigmoid",
    "softplus",
    "elu(0.5)",
    "leaky_relu(0.2)",
    "softmax",
    "log_softmax",
    "identity",
    "scale(0.5)",
    "dropout(0.1)",
    "dropout",
]
TORCH_MODULES = ("Identity", "ReLU", "Tanh", "GELU", "Sigmoid", "SiLU")


# A machine used as an edge checks its own relations and smallest sizes, but the machine
# that uses it does not take them over: its example inputs (and any size its forward
# accepts) may break them, unless the parent takes them over (it does; the reproducer
# is in tests/e2e/test_symbolic_random.py); False keeps such machines off symbolic spaces.
SUB_RELATIONS_AT_CALL = True


class Dim(int):
    """A spatial size known only at call time: ``form`` of the size symbol ``symbol``
    (``full``: H; ``half``: (H + 1) // 2, what a stride-2 convolution makes; ``floor``:
    H // 2, what pooling by 2 makes).

    Its value as an ``int`` is the form's value at the size drawn for the symbol, and
    every decision of the generator compares those values: spaces whose sizes agree
    there are treated as the same size, and check then records the relation between
    their forms (``(H + 1) // 2 == H // 2``: H even), which holds at the drawn size.
    The symbols of one machine are drawn with one parity, so that every relation holds
    at the example size machc picks for all of them at once. Arithmetic gives plain
    ``int`` values, which no longer know their symbol.
    """

    symbol: str
    form: str

    def __new__(cls, value: int, symbol: str, form: str) -> Dim:
        dim = super().__new__(cls, value)
        dim.symbol, dim.form = symbol, form
        return dim

    def text(self, rng: random.Random) -> str:
        """The size as a .mach expression, in one of several forms check must find equal."""
        s = self.symbol
        choices = {
            "full": [s],
            "half": [f"(({s} + 1) // 2)", f"({s} - 1) // 2 + 1", f"{s} - {s} // 2"],
            "floor": [f"{s} // 2", f"({s} - 2) // 2 + 1", f"({s} - {s} % 2) // 2"],
        }[self.form]
        return rng.choice(choices)


def symbolic(shape: Shape) -> bool:
    """Whether a shape has sizes known only at call time."""
    return any(isinstance(n, Dim) for n in shape)


@dataclass
class Names:
    """Fresh identifiers for one machine (spaces, edges, parameters share one pool)."""

    rng: random.Random
    taken: set[str] = field(default_factory=set)

    def fresh(self, pool: list[str]) -> str:
        for _ in range(8):
            name = self.rng.choice(pool)
            if self.rng.random() < 0.2:
                name += self.rng.choice(["1", "2", "_", "_x", "0"])
            if name not in self.taken:
                self.taken.add(name)
                return name
        n = len(self.taken)
        name = f"{self.rng.choice(pool)}{n}"
        while name in self.taken:
            n += 1
            name = f"{self.rng.choice(pool)}{n}"
        self.taken.add(name)
        return name


@dataclass
class Space:
    name: str
    role: str  # input, space, output
    shape: Shape
    written: bool = False
    # what each edge that writes it reads (names as written), whether it writes only this
    # space, and whether its pipeline tells its shape without looking at its outputs
    writers: list[tuple[list[str], bool, bool]] = field(default_factory=list)
    pinned: bool = False  # written by a line drawn elsewhere: keeps its shape


@dataclass
class Machine:
    """One machine being drawn: its parameters, spaces and body lines."""

    name: str
    rng: random.Random
    time: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    spaces: list[Space] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    names: Names = field(init=False)

    def __post_init__(self) -> None:
        self.names = Names(self.rng)
        if self.time:
            self.names.taken.add(self.time)

    # -- numbers -------------------------------------------------------------------

    def num(self, value: int) -> str:
        """An integer expression worth ``value``, sometimes written with parameters."""
        rng = self.rng
        for name, p in self.params.items():
            if p == value and rng.random() < 0.6:
                return name
            if p and value == 2 * p and rng.random() < 0.4:
                return f"2 * {name}"
            if p and value % p == 0 and value // p > 1 and rng.random() < 0.2:
                return f"{name} * {value // p}"
        roll = rng.random()
        if roll < 0.06:
            return f"({value + 3} - 3)"
        if roll < 0.1 and value >= 0:
            return f"{2 * value + 1} // 2"
        if roll < 0.12 and value > 0:
            return f"-(-{value})"
        return str(value)

    def add_param(self, base: str, value: int) -> str:
        name = self.names.fresh([base])
        self.params[name] = value
        return name

    def header(self) -> str:
        parts = []
        for name, value in self.params.items():
            parts.append(f"{name}: int = {value}")
        if self.rng.random() < 0.15:
            parts.append(f"{self.names.fresh(['rate', 'p'])}: float = 0.25")
        if self.rng.random() < 0.1:
            parts.append(f"{self.names.fresh(['flag', 'use'])}: bool = true")
        params = f"({', '.join(parts)})" if parts else ("()" if self.rng.random() < 0.1 else "")
        over = f" over {self.time}" if self.time else ""
        return f"machine {self.name}{params}{over} {{"

    def text(self) -> str:
        declared = []
        for k, space in enumerate(self.spaces):
            if self._inferable(space, {s.name for s in self.spaces[:k]}):
                declared.append(f"    {space.role:<6} {space.name}")  # the shape left out
                continue
            declared.append(f"    {space.role:<6} {space.name} : {self.shape_text(space.shape)}")
        body = [*declared, "", *(_indent(line) for line in self.lines)]
        if self.rng.random() < 0.1:
            self.rng.shuffle(body)  # any order is fine: spaces are declared before edges resolve
        return "\n".join([self.header(), *body, "}"])

    def _inferable(self, space: Space, earlier: set[str]) -> bool:
        """Whether to leave the shape of ``space`` out, now and then, where check can infer
        it: every writer tells the shape from spaces declared before it (so that no shape
        left out depends on itself), and writes only this space."""
        if space.role == "input" or space.pinned or not space.writers:
            return False
        known = earlier | ({self.time} if self.time else set())
        for reads, alone, tells in space.writers:
            if not alone or not tells or any(r.split("[")[0] not in known for r in reads):
                return False
        return self.rng.random() < 0.3

    def shape_text(self, shape: Shape) -> str:
        if shape and shape[0] < 0:  # ids(n)
            return f"ids({self.num(-shape[0])})"
        if len(shape) == 1 and self.rng.random() < 0.85:
            return self.num(shape[0])
        return "[" + ", ".join(self.size_text(n) for n in shape) + "]"

    def size_text(self, n: int) -> str:
        return n.text(self.rng) if isinstance(n, Dim) else self.num(n)

    def space(self, role: str, shape: Shape, name: str | None = None) -> Space:
        space = Space(name or self.names.fresh(SPACE_NAMES), role, shape)
        self.spaces.append(space)
        return space

    def edge_name(self) -> str:
        return self.names.fresh(EDGE_NAMES)

    def edge(self, reads: list[str], writes: list[str], pipeline: str) -> None:
        product = " × " if self.rng.random() < 0.5 else " * "
        arrow = " -> " if self.rng.random() < 0.9 else " → "
        line = (
            f"{self.edge_name()} : {product.join(reads)}{arrow}{product.join(writes)} = {pipeline}"
        )
        roll = self.rng.random()
        if roll < 0.05:  # a condition that holds: the edge is kept
            cond = self.rng.choice(
                [f"{self.num(3)} > 2", "true", f"not {self.num(1)} == 0 or false"]
                + [f"min({self.num(2)}, 5) % 2 == 0 and 2 ** {self.num(2)} >= 4"]
            )
            line = f"if {cond} {{\n    {line}\n}}"
        elif roll < 0.08:  # the edge in the else branch; the other is never checked
            line = f"if {self.num(1)} != 1 {{ no_edge : nowhere -> y = no_op(1 // 0) }}\n" + (
                f"else {{\n    {line}\n}}"
            )
        self.lines.append(line)
        tells = _tells_shape(pipeline)
        for name in writes:
            space = next((s for s in self.spaces if s.name == name), None)
            if space is not None:
                space.writers.append((list(reads), len(writes) == 1, tells))
            else:  # an array element: the spaces it writes into keep their shapes
                for s in self.spaces:
                    s.pinned |= s.name == name.split("[")[0]


def _tells_shape(pipeline: str) -> bool:
    """Whether a pipeline's result has a shape of its own: no op takes its size from the
    edge's outputs (a machine used as an edge gives its outputs' shapes; ``shared`` may
    reuse an op that does)."""
    for part in pipeline.split("|"):
        name = part.strip().split("(")[0].strip()
        if name == "shared":
            return False
        spec = OPS.get(name)
        if spec is not None and spec.changes_channels:
            if ("shape=" if spec.extra_args else "out=") not in part:
                return False
    return True


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.split("\n"))


# --- pipelines ----------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def keeping_ops(rng: random.Random, shape: Shape, k: int, channels: bool = True) -> list[str]:
    """Up to ``k`` ops that keep ``shape`` as it is (``channels``: some of them may be
    channel-changing ops that keep the count, which must then say it with ``out=``)."""
    ops = []
    spatial = shape[1:]
    positions = math.prod(spatial)  # sizes known at call time: at the drawn sizes
    # Normalising over axes of sizes known only at call time is refused: over the channels.
    norms = ["layernorm", "layernorm(affine=false)", "rmsnorm"]
    if symbolic(spatial):
        norms = ['layernorm(axes="channels")', 'rmsnorm(axes="channels")']
        norms.append('layernorm(affine=false, axes="channels")')
    for _ in range(k):
        roll = rng.random()
        if roll < 0.45:
            ops.append(rng.choice(ACTIVATIONS))
        elif roll < 0.55:
            ops.append(rng.choice(norms))
        elif roll < 0.62:
            # every group normalises two values or more (one is E009)
            groups = [g for g in _divisors(shape[0]) if shape[0] // g * positions >= 2]
            ops.append(f"groupnorm({rng.choice(groups)})" if groups else "identity")
        elif roll < 0.68:
            ops.append(rng.choice(["batchnorm", "batchnorm(momentum=0.5)"]))
        elif not channels:
            ops.append(rng.choice(ACTIVATIONS))
        elif spatial and roll < 0.74:
            instance = ["instancenorm", "instancenorm(affine=true)"] if positions >= 2 else []
            ops.append(rng.choice([*instance, "channel_dropout(0.2)"]))
        elif spatial and roll < 0.77:
            ops.append(rng.choice(["maxpool(3, stride=1, padding=1)", "avgpool(1)"]))
        elif spatial and roll < 0.8:
            ops += rng.choice(
                [["pad(1)", "crop(1)"], ['layernorm(axes="channels")'], ["transpose(1, 1)"]]
            )
        elif spatial and roll < 0.9:
            k_ = rng.choice([1, 3, 5])
            pad = rng.choice([str(k_ // 2), '"same"'])
            if min(spatial) + 2 * (k_ // 2) >= k_:
                ops.append(f"conv({k_}, padding={pad}, out={shape[0]})")
        elif roll < 0.95 and not spatial:
            ops.append(f'module("torch.nn.{rng.choice(TORCH_MODULES)}", shape={shape[0]})')
        else:
            ops.append(f"linear(out={shape[0]})")
    return ops


def channel_op(rng: random.Random, shape: Shape, out: int, last: bool) -> str:
    """An op from ``shape[0]`` channels to ``out`` channels (``out=`` unless ``last``)."""
    spatial = shape[1:]
    extra = "" if last else f"out={out}"
    if spatial and rng.random() < 0.6:
        k = rng.choice([1, 3])
        groups = [g for g in _divisors(math.gcd(shape[0], out)) if g > 1]
        args = [str(k)]
        if k == 3 and min(spatial) >= 1:
            args.append("padding=1")
        if groups and rng.random() < 0.3:
            args.append(f"groups={rng.choice(groups)}")
        if rng.random() < 0.2:
            args.append("bias=false")
        if extra:
            args.append(extra)
        return f"conv({', '.join(args)})"
    if not spatial and last and rng.random() < 0.1:
        return f'module("torch.nn.Linear", {shape[0]}, {out})'
    args = []
    if rng.random() < 0.2:
        args.append("bias=false")
    if extra:
        args.append(extra)
    if not args:
        return "linear" if rng.random() < 0.8 else "linear()"
    return f"linear({', '.join(args)})"


def pipeline(rng: random.Random, inputs: list[Shape], outputs: list[Shape]) -> str | None:
    """A pipeline from the product of ``inputs`` to the product of ``outputs``, or None.

    Sizes known only at call time (:class:`Dim`) compare by their values at the drawn
    sizes; no pipeline flattens them into weights (``flatten | linear``) or reshapes a
    vector into them, and none pools to them by ``adaptive_avg_pool``, whose sizes are
    numbers."""
    s_in, s_out = inputs[0][1:], outputs[0][1:]
    if any(s[1:] != s_in for s in inputs) or any(s[1:] != s_out for s in outputs):
        return None
    at_call = symbolic(s_in) or symbolic(s_out)
    c_in = sum(s[0] for s in inputs)
    c_out = sum(s[0] for s in outputs)
    ops: list[str] = []
    shape: Shape = (c_in, *s_in)
    if len(inputs) >= 2 and len(set(inputs)) == 1 and rng.random() < 0.3:
        ops.append(rng.choice(["add", "mul"]))
        shape = inputs[0]
    ops += keeping_ops(rng, shape, rng.choice([0, 0, 1, 1, 2]))
    if s_in and not s_out:  # to a vector
        roll = rng.random()
        if at_call and 0.4 <= roll < 0.7:
            roll = rng.choice([0.0, 0.9])
        if roll < 0.4:
            ops.append(rng.choice(["global_avg_pool", "global_max_pool"]))
            shape = (shape[0],)
        elif roll < 0.7:
            ops.append("flatten")
            shape = (shape[0] * math.prod(shape[1:]),)
        else:
            ones = [1] * len(s_in)
            size = "1" if rng.random() < 0.5 else str(ones)
            ops += [f"{rng.choice(['adaptive_avg_pool', 'adaptive_max_pool'])}({size})", "flatten"]
            shape = (shape[0],)
    elif not s_in and s_out:  # a vector into a signal, image or volume
        if at_call:
            return None
        total = c_out * math.prod(s_out)
        if shape[0] != total:
            ops.append(f"linear(out={total})")
        ops.append(f"reshape([{', '.join(str(n) for n in (c_out, *s_out))}])")
        shape = (c_out, *s_out)
    elif s_in != s_out:
        if len(s_in) != len(s_out):
            return None
        pools = all(o == i // 2 for i, o in zip(s_in, s_out, strict=True)) and min(s_in) >= 2
        # Sizes known at call time have no adaptive_avg_pool below to fall back on.
        if all(o == (i + 1) // 2 for i, o in zip(s_in, s_out, strict=True)) and (
            rng.random() < (0.6 if pools or not at_call else 1.0)
        ):
            # (n + 2 - 3) // 2 + 1 == (n - 1) // 2 + 1 == (n + 1) // 2, written three ways
            if rng.random() < 0.25:
                ops.append(f"conv(1, stride=2, out={c_out})")
                shape = (c_out, *s_out)
            elif rng.random() < 0.3:
                ops.append("maxpool(3, stride=2, padding=1)")
                shape = (shape[0], *s_out)
            else:
                ops.append(f"conv(3, stride=2, padding=1, out={c_out})")
                shape = (c_out, *s_out)
        elif pools:
            if rng.random() < 0.25:  # (n - 2) // 2 + 1 and (n + 2 - 4) // 2 + 1: n // 2
                ops.append(rng.choice(["conv(2, stride=2", "conv(4, stride=2, padding=1"]))
                ops[-1] += f", out={c_out})"
                shape = (c_out, *s_out)
            else:
                ops.append(rng.choice(["maxpool(2)", "avgpool(2)", "avgpool(2, stride=2)"]))
                shape = (shape[0], *s_out)
        elif all(o == 2 * i for i, o in zip(s_in, s_out, strict=True)) and (
            at_call or rng.random() < 0.7
        ):
            if rng.random() < 0.5:
                modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
                mode = rng.choice(["nearest", modes[len(s_in)]])
                ops.append(f'upsample(2, mode="{mode}")' if mode != "nearest" else "upsample(2)")
                shape = (shape[0], *s_out)
            else:
                ops.append(f"conv_transpose(2, stride=2, out={c_out})")
                shape = (c_out, *s_out)
        elif at_call:
            return None
        else:
            size = s_out[0] if len(set(s_out)) == 1 and rng.random() < 0.5 else list(s_out)
            ops.append(f"adaptive_avg_pool({size})")
            shape = (shape[0], *s_out)
    ops += keeping_ops(rng, shape, rng.choice([0, 1, 1, 2]))
    if shape[0] != c_out or rng.random() < 0.3:
        ops.append(channel_op(rng, shape, c_out, last=True))
        if rng.random() < 0.4:
            ops += keeping_ops(rng, (c_out, *s_out), 1, channels=False)
    ops = [op for op in ops if op]
    if not ops:
        ops = ["identity"]
    return " | ".join(ops)


# --- feed-forward machines ------------------------------------------------------------


# Names of size symbols, per rank: None is an axis of a fixed size.
SYMBOLS = {
    1: [("L",), ("T",), ("length",), ("N",)],
    2: [("H", "W"), ("H", "W"), ("S", "S"), ("rows", "cols"), ("H", None), (None, "W")],
    3: [("D", "H", "W"), ("S", "S", "S"), (None, "H", "W")],
}


def _shapes(
    rng: random.Random, at_call: bool = False, rank: int | None = None
) -> tuple[list[Shape], Shape | None]:
    """A family of shapes a machine draws its spaces from, and its largest spatial shape.

    ``at_call``: spatial axes are mostly sizes known at call time (:class:`Dim`); the
    first three shapes, those inputs take, are then the largest one or vectors, since
    an input's axis is a number or one symbol by itself. ``rank``: the rank to draw
    mostly (that of a machine with symbols to use as an edge)."""
    if rank is None or rng.random() < 0.3:
        rank = rng.choices([0, 1, 2, 3], weights=[6, 2, 3, 1])[0]
    if at_call and rank == 0:
        rank = rng.choice([1, 2, 2])
    if rank == 0:
        return [(rng.randint(1, 12),) for _ in range(6)], None
    side = [rng.randint(2, 8) for _ in range(rank)]
    if rank >= 2 and rng.random() < 0.7:
        side = [side[0]] * rank
    if at_call:
        # Values of one parity (see Dim); a symbol named twice has one value.
        names = rng.choice(SYMBOLS[rank])
        base = rng.randint(4, 9)
        values = {name: base + 2 * rng.randint(0, 2) for name in names if name}
        full = tuple(
            Dim(values[name], name, "full") if name else side[k] for k, name in enumerate(names)
        )
        half = tuple(
            Dim((n + 1) // 2, n.symbol, "half") if isinstance(n, Dim) else (n + 1) // 2
            for n in full
        )
        floor = tuple(
            Dim(n // 2, n.symbol, "floor") if isinstance(n, Dim) else max(1, n // 2) for n in full
        )
        spatial = [full, full, full, half, floor, ()]
        shapes = [(rng.randint(1, 8), *rng.choice(spatial)) for _ in range(6)]
        shapes[0] = (shapes[0][0], *full)
        for k in (1, 2):
            shapes[k] = (shapes[k][0], *rng.choice([full, full, ()]))
        return shapes, full
    full = tuple(side)
    half = tuple((n + 1) // 2 for n in side)
    floor = tuple(max(1, n // 2) for n in side)
    spatial = [full, full, full, half, floor, ()]
    shapes = [(rng.randint(1, 8), *rng.choice(spatial)) for _ in range(6)]
    return shapes, full


def feedforward(
    rng: random.Random, name: str = "M", subs: list[tuple[str, Shape, Shape, str]] = ()
) -> str:
    """One machine without time; ``subs``: (call, input, output, machine) usable as edges."""
    m = Machine(name, rng)
    at_call = rng.random() < 0.3  # sizes known at call time: input img : [3, H, W]
    ranks = [len(i) - 1 for _, i, _, _ in subs if any(isinstance(n, str) for n in i)]
    family, full = _shapes(rng, at_call, rng.choice(ranks) if ranks else None)
    at_call = bool(full) and symbolic(full)
    for n in full or ():
        if isinstance(n, Dim):
            m.names.taken.add(n.symbol)
    if rng.random() < 0.4:  # a parameter that sizes the first input
        m.add_param("n", family[0][0])
    if full and rng.random() < 0.3:
        m.add_param("size", int(full[0]))
    n_in = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    n_hidden = rng.randint(0, 4)
    n_out = rng.choices([1, 2], weights=[4, 1])[0]
    ins = [m.space("input", rng.choice(family[:3]) if i else family[0]) for i in range(n_in)]
    hidden = [m.space("space", rng.choice(family)) for _ in range(n_hidden)]
    outs = [m.space("output", rng.choice(family[3:])) for _ in range(n_out)]
    order = [*ins, *hidden, *outs]
    if rng.random() < 0.3 and len(ins) >= 2:  # an edge into an input space
        a, b = ins[0], ins[1]
        p = pipeline(rng, [a.shape], [b.shape])
        if p:
            m.edge([a.name], [b.name], p)
    for k in range(n_in, len(order)):
        target = order[k]
        if target.written and rng.random() < 0.5:
            continue
        earlier = order[:k]
        first = rng.choice(earlier)
        reads = [first]
        for _ in range(rng.choice([0, 0, 1, 2])):
            same = [s for s in earlier if s.shape[1:] == first.shape[1:]]
            reads.append(rng.choice(same))
        writes = [target]
        later = [s for s in order[k + 1 :] if s.shape[1:] == target.shape[1:] and not s.written]
        if later and rng.random() < 0.2:
            writes.append(rng.choice(later))
        p = _sub_call(rng, subs, reads, writes) or pipeline(
            rng, [s.shape for s in reads], [s.shape for s in writes]
        )
        if p is None:
            reads = [first]
            p = pipeline(rng, [first.shape], [s.shape for s in writes])
        if p is None:
            continue
        m.edge([s.name for s in reads], [s.name for s in writes], p)
        for s in writes:
            s.written = True
        same_shape = [s for s in earlier if s.shape == target.shape]
        if same_shape and rng.random() < 0.3:  # a residual connection: contributions add up
            m.edge([rng.choice(same_shape).name], [target.name], "identity")
    for target in order[n_in:]:
        if not target.written:
            p = pipeline(rng, [ins[0].shape], [target.shape])
            if p is None:
                p = pipeline(rng, [ins[0].shape], [target.shape])
            if p is not None:
                m.edge([ins[0].name], [target.name], p)
    if at_call and rng.random() < 0.2:
        _add_other_symbols(rng, m, order[n_in:])
    if rng.random() < 0.35:
        _add_array(rng, m, ins[0], outs[0])
    if rng.random() < 0.15:
        _add_shared(rng, m)
    if rng.random() < 0.2 and not at_call:  # machines with solved cycles refuse symbols
        _add_solved_cycle(rng, m, order[n_in:])
    return m.text()


def _add_other_symbols(rng: random.Random, m: Machine, targets: list[Space]) -> None:
    """One more input with size symbols of its own (a signal beside an image), pooled
    into a vector that another edge writes too."""
    vectors = [s for s in targets if len(s.shape) == 1 and s.written]
    if not vectors:
        return
    target = rng.choice(vectors)
    rank = rng.choice([1, 1, 2])
    names = [m.names.fresh([name]) for name in ["K", "P", "Q"][:rank]]
    value = rng.randint(3, 9)
    shape = (rng.randint(1, 6), *(Dim(value, name, "full") for name in names))
    x = m.space("input", shape)
    m.edge([x.name], [target.name], pipeline(rng, [shape], [target.shape]) or "global_avg_pool")


def _add_solved_cycle(rng: random.Random, m: Machine, targets: list[Space]) -> None:
    """A cycle through a written space, and the solve that finds its fixed point.

    Usually contractive (a normalised, scaled linear map then tanh); sometimes any
    pipeline, which need not converge (the solver then warns: not a failure)."""
    written = [s for s in targets if s.written and len(s.shape) <= 2]
    if not written:
        return
    z = rng.choice(written)
    others = [s for s in m.spaces if s is not z and s.shape[1:] == z.shape[1:]]
    reads = [z] + ([rng.choice(others)] if others and rng.random() < 0.5 else [])
    if rng.random() < 0.7:
        args = [] if len(z.shape) == 1 or rng.random() < 0.5 else ["3", "padding=1"]
        if rng.random() < 0.8:
            args.append("spectral_norm=true")
        op = "conv" if args[:1] == ["3"] else "linear"
        p = f"{op}({', '.join(args)}) | scale(0.5) | tanh"
    else:
        p = pipeline(rng, [s.shape for s in reads], [z.shape])
        if p is None:
            return
    reads = [s.name for s in reads]
    m.edge(reads, [z.name], p)
    solver = rng.choice(sorted(SOLVERS))
    args = rng.choice(["", "()", "(tol=1e-4)", f"(max_iter={rng.randint(1, 30)})"])
    if rng.random() < 0.2:
        args = "(backward=unrolled, max_iter=8)"
    m.lines.append(f"solve {z.name} with {solver}{args}")


def _sub_call(rng, subs, reads, writes) -> str | None:
    """A machine call that fits an edge from ``reads`` to ``writes`` (one each), if any."""
    if len(reads) != 1 or len(writes) != 1 or not subs or rng.random() < 0.5:
        return None
    r, w = reads[0].shape, writes[0].shape
    fits = [
        call
        for call, i, o, _ in subs
        if (i == r and o == w and not symbolic(r)) or _fits_symbols(i, o, r, w)
    ]
    # {c} and {o}: the channels, passed as the sub-machine's parameters
    return rng.choice(fits).format(c=r[0], o=w[0]) if fits else None


def _fits_symbols(i: tuple, o: tuple, r: Shape, w: Shape) -> bool:
    """Whether a machine with size symbols, its input ``i`` and output ``o`` written as
    (channels, marks...), takes a space of shape ``r`` and gives one of shape ``w``: it
    binds its symbols to the sizes of ``r``, whatever they are. Channels None: any (the
    call passes them). Marks: ``*`` an input axis, ``=`` the same size, ``even`` the
    same size where it must be even, ``half`` what a stride-2 convolution makes; ``s``
    on the input: one symbol for every axis, so they must be one size."""
    if not any(isinstance(n, str) for n in i) or len(i) != len(r) or len(o) != len(w):
        return False
    if len(r) != len(w) or (i[0] is not None and (r[0], w[0]) != (i[0], o[0])):
        return False
    if "s" in i and not all(_same_size(a, r[1]) for a in r[1:]):
        return False  # one symbol for every axis: they must be one size
    for mark, a, b in zip(o[1:], r[1:], w[1:], strict=True):
        if mark == "even" and symbolic(r) and not SUB_RELATIONS_AT_CALL:
            return False
        if mark == "half" and b != (a + 1) // 2:
            return False
        if mark in ("=", "even") and b != a:
            return False
        if mark == "even" and a % 2:
            return False
    return True


def _add_array(rng: random.Random, m: Machine, source: Space, target: Space) -> None:
    """An array of spaces with a loop over it: a chain, dense shortcuts or a grid."""
    count = rng.randint(0, 4)
    depth = m.add_param("depth", count) if rng.random() < 0.7 else str(count)
    width = rng.randint(1, 8)
    shape: Shape = (width, *source.shape[1:])
    spatial = bool(shape[1:])
    h = m.names.fresh(["h", "blk", "layer", "stage"])
    i = m.names.fresh(["i", "k", "j", "l"])
    g = m.names.fresh(["g", "block", "cell"])
    lo = rng.choice([0, 1, 1, 1, -1])
    last = depth if lo == 1 else f"{depth} + {lo - 1}" if lo > 1 else f"{depth} - {1 - lo}"
    kind = rng.choice(["chain", "dense", "grid"])
    if kind == "chain" and count == 0:
        kind = "dense"
    m.lines.append(f"space {h}[{lo}..{last}] : {m.shape_text(shape)}")
    lin = "conv(3, padding=1)" if spatial and rng.random() < 0.5 else "linear"
    ops = keeping_ops(rng, shape, rng.choice([0, 1]), channels=False)
    body = " | ".join([lin, *ops, rng.choice(["relu", "tanh", "gelu"])])
    if kind == "chain":
        m.lines.append(f"{m.edge_name()} : {source.name} -> {h}[{lo}] = {body}")
        m.lines.append(
            f"for {i} in {lo + 1}..{last} {{\n    {g}[{i}] : {h}[{i}-1] -> {h}[{i}] = {body}\n}}"
        )
        readout = f"{h}[{last}]"
    elif kind == "dense":
        m.lines.append(
            f"for {i} in {lo}..{last} {{\n"
            f"    {g}[{i}] : {source.name} × {h}[{lo}..{i}-1] -> {h}[{i}] = {body}\n}}"
        )
        readout = f"{h}[{lo}..{last}]"
    else:
        cols = rng.randint(1, 3)
        j = m.names.fresh(["c", "col", "q"])
        cell = m.names.fresh(["cell", "unit"])
        row = m.names.fresh(["row", "rows"])
        at = f"{i} * 10 + {j}"
        m.lines.append(
            f"for {i} in {lo}..{last} {{\n"
            f"    for {j} in 1..{cols} {{\n"
            f"        space {cell}[{at} .. {at}] : {m.shape_text(shape)}\n"
            f"        {g}[{at}] : {source.name} -> {cell}[{at}] = {body}\n"
            f"    }}\n"
            f"    {row}[{i}] : {cell}[{i} * 10 + 1 .. {i} * 10 + {cols}] -> {h}[{i}] = {lin}\n"
            f"}}"
        )
        readout = f"{h}[{lo}..{last}]"
    if count == 0:  # an empty array: nothing to read out
        return
    if kind == "chain":
        p = pipeline(rng, [shape], [target.shape])
    elif target.shape[1:] == shape[1:]:
        p = lin
    elif spatial and not target.shape[1:]:
        p = "global_avg_pool | linear"
    else:
        p = None
    if p:
        m.edge([readout], [target.name], p)


def _add_shared(rng: random.Random, m: Machine) -> None:
    """An edge that reuses the layers of another: ``shared(e)``, on spaces of the same shapes."""
    for line in list(m.lines):
        if line.startswith("if "):
            continue  # an edge inside an if
        head, _, pipe = line.partition(" = ")
        name, _, ports = head.partition(" : ")
        if "[" in name or "[" in ports or "module(" in pipe or "shared" in pipe:
            continue
        if not any(op in pipe for op in ("linear", "conv", "norm")):
            continue
        reads, _, writes = ports.replace("→", "->").partition(" -> ")
        m.edge([reads.strip()], [writes.strip()], f"shared({name.strip()})")
        return


# --- machines over time ----------------------------------------------------------------


def overtime(
    rng: random.Random, name: str = "M", subs: list[tuple[str, Shape, Shape, str]] = ()
) -> str:
    """One machine over time: recurrences (either direction), attention, ids, positions."""
    time = rng.choice(["t", "t", "t", "step", "tau", "now"])
    m = Machine(name, rng, time=time)
    width = rng.choice([4, 6, 8, 12])
    heads = rng.choice([h for h in (1, 2, 3, 4) if width % h == 0])
    kind = rng.choices(["rnn", "transformer", "mixed"], weights=[5, 3, 2])[0]
    attention = kind in ("transformer", "mixed")
    if rng.random() < 0.4:
        width_param = m.add_param("d", width)
        del width_param
    uses_ids = rng.random() < 0.35
    x = m.space("input", (-rng.randint(2, 20),) if uses_ids else (rng.randint(1, 6),))
    hidden = [m.space("space", (width,)) for _ in range(rng.randint(1, 4))]
    out = m.space("output", (rng.randint(1, 6),))
    order = [x, *hidden, out]
    if uses_ids:
        m.edge(
            [x.name], [hidden[0].name], rng.choice(["embedding", "embedding()", "embedding | tanh"])
        )
        hidden[0].written = True
    else:
        m.edge([x.name], [hidden[0].name], pipeline(rng, [x.shape], [(width,)]) or "linear")
        hidden[0].written = True
    if rng.random() < 0.35:  # positions: the time index itself, embedded
        m.edge([time], [hidden[0].name], f"embedding({rng.randint(8, 64)})")
    direction = rng.choice([1, 1, -1]) if kind != "transformer" else 0
    back_reads = kind == "rnn" and not uses_ids and rng.random() < 0.3
    cyclic: set[str] = set()
    for k in range(1, len(order)):
        target = order[k]
        earlier = [s for s in order[:k] if not (s.shape[0] < 0)]
        if attention and k < len(order) - 1 and len(earlier) >= 1 and rng.random() < 0.5:
            src = rng.choice(earlier)
            if src.shape == (width,) and target.shape == (width,):
                q, kk, v = (m.space("space", (width,)) for _ in range(3))
                window = rng.choice([f"0..{time}", f"{time}-{rng.randint(1, 3)}..{time}", ".."])
                m.edge([src.name], [q.name, kk.name, v.name], "linear")
                for s in (q, kk, v):
                    s.written = True
                tail = rng.choice([" | linear", "", " | linear | relu"])
                m.lines.append(
                    f"{m.edge_name()} : {q.name} × {kk.name}[{window}] × {v.name}[{window}] -> "
                    f"{target.name} = attention(heads={heads}){tail}"
                )
                target.written = True
                target.pinned = True
                if rng.random() < 0.5:
                    m.edge([src.name], [target.name], "identity")
                continue
        if not earlier:
            continue
        reads = [rng.choice(earlier).name]
        for _ in range(rng.choice([0, 1])):
            src = rng.choice(earlier)
            lag = rng.choice([0, 1, 1, 2])
            sign = "-" if rng.random() < 0.7 else "+"
            reads.append(f"{src.name}[{time}{sign}{lag}]" if lag else src.name)
        recurrent = direction and target.name not in cyclic and rng.random() < 0.6
        if recurrent:
            lag = rng.choice([1, 1, 1, 2, 3])
            sign = "-" if direction > 0 else "+"
            if rng.random() < 0.2:
                param = m.add_param("lag", lag)
                reads.append(f"{target.name}[{time}{sign}{param}]")
            else:
                reads.append(f"{target.name}[{time}{sign}{lag}]")
            cyclic.add(target.name)
        if back_reads and k + 1 < len(order) and rng.random() < 0.3:
            later = rng.choice(order[k + 1 :])
            reads.append(f"{later.name}[{time}{'-' if direction >= 0 else '+'}1]")
        shapes = [_shape_of(order, r) for r in reads]
        call = None
        if subs and len(reads) == 1 and not recurrent and rng.random() < 0.5:
            fits = [c for c, i, o, _ in subs if i == shapes[0] and o == target.shape]
            call = rng.choice(fits) if fits else None
        p = call or pipeline(rng, shapes, [target.shape])
        if p is None:
            continue
        if rng.random() < 0.15 and len(reads) == 2 and shapes[0] == shapes[1] == target.shape:
            p = "mul"  # a gate, as in an LSTM's c = fg · c[t-1] + i · g
        m.edge(reads, [target.name], p)
        target.written = True
    for target in order[1:]:
        if not target.written:
            src = hidden[0]
            m.edge(
                [src.name], [target.name], pipeline(rng, [src.shape], [target.shape]) or "linear"
            )
    if rng.random() < 0.2:
        _add_time_array(rng, m, hidden[0], out)
    return m.text()


def _shape_of(order: list[Space], read: str) -> Shape:
    name = read.split("[")[0]
    return next(s.shape for s in order if s.name == name)


def _add_time_array(rng: random.Random, m: Machine, source: Space, target: Space) -> None:
    """The time machine's dense shortcuts: every block reads every block of the previous step."""
    depth = rng.randint(1, 3)
    d = m.add_param("depth", depth) if rng.random() < 0.5 else str(depth)
    h = m.names.fresh(["blk", "hh", "cells"])
    i = m.names.fresh(["i", "j"])
    g = m.names.fresh(["g", "unit"])
    width = rng.randint(1, 6)
    m.lines.append(f"space {h}[1..{d}] : {width}")
    m.lines.append(
        f"for {i} in 1..{d} {{\n"
        f"    {g}[{i}] : {source.name} × {h}[1..{i}-1] × {h}[1..{d}][{m.time}-1] -> {h}[{i}] = "
        f"linear | {rng.choice(['tanh', 'relu', 'sigmoid'])}\n}}"
    )
    m.edge([f"{h}[{d}]"], [target.name], "linear")


# --- files --------------------------------------------------------------------------

_STD_CALLS = {
    # import, call template, input shape, output shape (from drawn sizes a, b)
    "blocks": [
        ("MLP(n={a}, width={w}, out={b}, depth={k})", lambda a, b: ((a,), (b,))),
        ("ResBlock(w={a})", lambda a, b: ((a,), (a,))),
        ("DenseMachine(n={a}, depth={k}, width={w}, out={b})", lambda a, b: ((a,), (b,))),
    ],
    "conv": [
        ("ConvBlock(c_in={a}, c_out={b}, size={s})", None),
        ("ResConvBlock(c={a}, size={s})", None),
    ],
    "recurrent": [
        ("Elman(n={a}, m={w}, dir={d})", lambda a, b: ((a,), (a,))),
        ("LSTM(n={a}, m={b}, dir={d})", lambda a, b: ((a,), (b,))),
        ("GRU(n={a}, m={b}, dir={d})", lambda a, b: ((a,), (b,))),
        ("BiLSTM(n={a}, m={b})", lambda a, b: ((a,), (2 * b,))),
        ("BiGRU(n={a}, m={b})", lambda a, b: ((a,), (2 * b,))),
    ],
    "attention": [
        ("CausalBlock(d={h4}, heads={hd}, hidden={w})", None),
        ("LocalBlock(d={h4}, heads={hd}, hidden={w}, w={k})", None),
        ("EncoderLayer(d={h4}, heads={hd}, hidden={w})", None),
        ("MLPBlock(d={a}, hidden={w})", lambda a, b: ((a,), (a,))),
    ],
}


def std_calls(
    rng: random.Random, module: str, sizes: list[int]
) -> list[tuple[str, Shape, Shape, str]]:
    """Calls of the machines of ``std.module``, mostly with sizes from ``sizes``."""
    calls = []
    for template, shapes in _STD_CALLS[module]:
        a, b = (rng.choice(sizes) if rng.random() < 0.7 else rng.randint(1, 8) for _ in "ab")
        values = {
            "a": a,
            "b": b,
            "w": rng.randint(1, 16),
            "k": rng.randint(1, 3),
            "d": rng.choice([1, -1]),
            "s": rng.randint(2, 8),
            "hd": rng.choice([1, 2]),
        }
        values["h4"] = 4 * values["hd"]
        call = template.format(**values)
        if shapes is not None:
            i, o = shapes(a, b)
        elif module == "conv":
            s = values["s"]
            i, o = (a, s, s), ((b if "c_out" in template else a), s, s)
        else:
            i = o = (values["h4"],)
        calls.append((call, i, o, call.split("(")[0]))
    return calls


def block(
    rng: random.Random, name: str, time: str | None, sizes: list[int]
) -> tuple[str, list[tuple[str, Shape, Shape, str]]]:
    """A small machine to use as an edge, and the calls that fit it."""
    w = rng.choice(sizes)
    out = w if rng.random() < 0.5 else rng.choice(sizes)
    over = f" over {time}" if time else ""
    rec = f"    r : y[{time}-1] -> y = linear(bias=false)\n" if time and rng.random() < 0.5 else ""
    text = (
        f"machine {name}(w: int = {w}, o: int = {out}){over} {{\n"
        f"    input  x : w\n    space  h : w\n    output y : o\n"
        f"    f : x -> h = linear | {rng.choice(['relu', 'tanh', 'gelu'])}\n"
        f"    g : h -> y = linear\n{rec}}}"
    )
    w2 = rng.choice(sizes)
    calls = [
        (f"{name}", (w,), (out,), name),
        (f"{name}(w={w2}, o={w2})", (w2,), (w2,), name),
        (f"{name}(o={w2})", (w,), (w2,), name),
    ]
    return text, calls


def _same_size(a: int, b: int) -> bool:
    """Whether two sizes are one for every size of the symbols: the same number, or the
    same form of the same symbol."""
    if isinstance(a, Dim) or isinstance(b, Dim):
        return getattr(a, "symbol", None) == getattr(b, "symbol", None) and (
            getattr(a, "form", None) == getattr(b, "form", None)
        )
    return a == b


def sym_block(
    rng: random.Random, name: str, sizes: list[int]
) -> tuple[str, list[tuple[str, tuple, tuple, str]]]:
    """A small machine over a signal, an image or a volume whose sizes are known at call
    time, to use as an edge: it binds its symbols from the space it is given. Its calls
    with their shapes as :func:`_fits_symbols` reads them."""
    rank = rng.choice([1, 2, 2, 3])
    symbols = [["L"], ["H", "W"], ["D", "H", "W"]][rank - 1]
    if rng.random() < 0.2:
        symbols = ["S"] * rank  # one symbol for every axis: square images
    c = rng.choice(sizes)
    out = c if rng.random() < 0.5 else rng.choice(sizes)
    kind = rng.choice(["same", "same", "even", "half"])
    axes = ", ".join(symbols)
    if kind == "half":
        made = ", ".join(f"({s} + 1) // 2" for s in symbols)
    else:
        made = axes
    hidden = f"[o, {axes}]" if rng.random() < 0.5 else ""
    declared = rng.random() < 0.6  # the output's shape; else inferred
    out_arg = "" if declared and rng.random() < 0.5 else ", out=o"
    act = rng.choice(["relu", "tanh", "gelu", 'layernorm(axes="channels")', "batchnorm"])
    lines = [
        f"machine {name}(c: int = {c}, o: int = {out}) {{",
        f"    input  x : [c, {axes}]",
        f"    space  h{' : ' + hidden if hidden else ''}",
        f"    output y{' : [o, ' + made + ']' if declared else ''}",
        f"    f : x -> h = conv(3, padding=1, out=o) | {act}",
    ]
    if kind == "same":
        lines.append(f"    g : h -> y = {rng.choice([f'conv(1{out_arg})', 'identity', 'relu'])}")
        if rng.random() < 0.5:  # a shortcut; c and o differ in some calls
            lines.append(f"    skip : x -> y = {rng.choice(['linear(out=o)', 'conv(1, out=o)'])}")
    elif kind == "even":  # pooled and upsampled, added to what it was: even sizes only
        pooled = ", ".join(f"{s} // 2" for s in symbols)
        lines.insert(3, f"    space  d{' : [o, ' + pooled + ']' if rng.random() < 0.5 else ''}")
        pool = rng.choice(["maxpool(2)", "avgpool(2)"])
        up = rng.choice(["upsample(2)", f"conv_transpose(2, stride=2{out_arg})"])
        lines.append(f"    down : h -> d = {pool}")
        lines.append(f"    up : d -> y = {up}")
        lines.append("    skip : h -> y = identity")
    else:
        lines.append(f"    g : h -> y = conv(3, stride=2, padding=1{out_arg})")
    lines.append("}")
    mark = {"same": "=", "even": "even", "half": "half"}[kind]
    c2, o2 = rng.choice(sizes), rng.choice(sizes)
    calls = []
    for call, ci, co in [
        (name, c, out),
        (f"{name}(c={c2}, o={o2})", c2, o2),
        (f"{name}(o={o2})", c, o2),
        (f"{name}(c={c2})", c2, out),
        (f"{name}(c={{c}}, o={{o}})", None, None),
        (f"{name}(o={{o}}, c={{c}})", None, None),
    ]:
        axis = "s" if symbols[0] == symbols[-1] else "*"
        calls.append((call, (ci, *[axis] * rank), (co, *[mark] * rank), name))
    return "\n".join(lines), calls


def well_formed(rng: random.Random) -> str:
    """A whole file: imports, helper machines, and one or more machines that use them."""
    time = rng.random() < 0.4
    parts: list[str] = []
    subs: list[tuple[str, Shape, Shape, str]] = []
    # The sizes the machines below draw from (over time: hidden widths), so that calls fit.
    sizes = [4, 6, 8, 12] if time else list(range(1, 13))
    if rng.random() < 0.3:
        modules = ["recurrent", "attention", "blocks"] if time else ["blocks", "conv"]
        module = rng.choice(modules)
        parts.append(f"import std.{module}")
        subs += std_calls(rng, module, sizes)
    if rng.random() < 0.3:
        name = rng.choice(["Block", "Cell", "Sub", "Inner"])
        text, calls = block(rng, name, "t" if time else None, sizes)
        parts.append(text)
        subs += calls
    if time and rng.random() < 0.15:  # a machine without time, used at every step
        text, calls = block(rng, "Step", None, sizes)
        parts.append(text)
        subs += calls
    if not time and rng.random() < 0.3:  # one with sizes known at call time
        name = rng.choice(["Stage", "Tower", "Unit", "Patch"])
        text, calls = sym_block(rng, name, sizes[:8])
        parts.append(text)
        subs += calls
    count = rng.choices([1, 2], weights=[5, 1])[0]
    used = {s[3] for s in subs}
    for k in range(count):
        name = rng.choice(["M", "Net", "Model", "Main", "Classifier", "Encoder"]) + (
            str(k) if k else ""
        )
        if name in used:
            name += "_"
        draw = overtime if time else feedforward
        parts.append(draw(rng, name, subs))
    if rng.random() < 0.3:
        parts.insert(rng.randint(0, len(parts)), "# a comment between machines")
    return "\n\n".join(parts) + "\n"
