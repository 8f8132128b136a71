"""An op call's arguments bound to its entry, and shapes inferred through a pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Op, Shape, Value, format_value
from ..sizes import Size, SymbolicSizeError
from .spec import (
    BOOL,
    FLOAT,
    INT,
    INTS,
    NUMS,
    PAIRS,
    PY_KEYWORDS,
    REQUIRED,
    STR,
    OpError,
    OpSpec,
    format_shape,
    scalars,
)
from .table import OPS

# --- binding arguments -------------------------------------------------------------


@dataclass
class Bound:
    """The result of binding an op call's arguments: values, or problems (with arg index)."""

    values: dict[str, Value] = field(default_factory=dict)
    extra: list[Value] = field(default_factory=list)
    extra_kw: dict[str, Value] = field(default_factory=dict)
    problems: list[tuple[int | None, str]] = field(default_factory=list)


def bind_args(spec: OpSpec, positional: list[Value], keyword: list[tuple[str, Value]]) -> Bound:
    """Match call arguments to ``spec.args``; defaults fill the rest. Problems name the arg."""
    bound = Bound()
    given: dict[str, tuple[int, Value]] = {}
    for i, value in enumerate(positional):
        if i >= len(spec.args) or (spec.extra_args and i >= 1):
            if spec.extra_args:
                bound.extra.append(value)
                continue
            bound.problems.append((i, f"{spec.name} takes {_count(len(spec.args))}"))
            continue
        given[spec.args[i].name] = (i, value)
    for j, (name, value) in enumerate(keyword):
        i = len(positional) + j
        if spec.arg(name) is None:
            if spec.extra_args:
                if name in bound.extra_kw or name in ("edge", "where"):
                    why = "given twice" if name in bound.extra_kw else "is reserved by machc"
                    bound.problems.append((i, f"argument {name!r} of {spec.name} {why}"))
                elif name in PY_KEYWORDS or name == "__debug__":
                    why = "is a Python keyword, so it cannot be passed on by name"
                    bound.problems.append((i, f"argument {name!r} of {spec.name} {why}"))
                bound.extra_kw[name] = value
                continue
            known = ", ".join(a.name for a in spec.args) or "no arguments"
            bound.problems.append((i, f"{spec.name} has no argument {name!r} (it takes {known})"))
        elif name in given:
            bound.problems.append((i, f"argument {name!r} of {spec.name} given twice"))
        else:
            given[name] = (i, value)
    for arg in spec.args:
        if arg.name not in given:
            if arg.default is REQUIRED:
                bound.problems.append((None, f"{spec.name} needs the argument {arg.name!r}"))
            elif arg.default is not None:
                bound.values[arg.name] = arg.default
            continue
        i, value = given[arg.name]
        converted = _convert(value, arg.kinds)
        if converted is None:
            bound.problems.append(
                (
                    i,
                    f"argument {arg.name!r} of {spec.name} must be {arg.describe_kinds()}, "
                    f"got {format_value(value)}",
                )
            )
            continue
        complaint = _too_large(converted) or (arg.check(converted) if arg.check else None)
        if complaint:
            bound.problems.append((i, f"argument {arg.name!r} of {spec.name} {complaint}"))
            continue
        bound.values[arg.name] = converted
    return bound


MAX_ARGUMENT = 2**24  # the largest integer an op argument takes (a size, a stride, heads)


def _too_large(value: Value) -> str | None:
    """A complaint about an integer (or one in a list) beyond :data:`MAX_ARGUMENT`."""
    for item in scalars(value):
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_ARGUMENT:
            return f"must be at most {MAX_ARGUMENT:,} in size, got {item:,}"
        if isinstance(item, float) and abs(item) > MAX_ARGUMENT:
            return f"must be at most {MAX_ARGUMENT:,} in size, got {item:g}"
    return None


def _count(n: int) -> str:
    return "no arguments" if n == 0 else f"at most {n} argument{'s' if n > 1 else ''}"


def _convert(value: Value, kinds: tuple[str, ...]) -> Value | None:
    """``value`` as the first of ``kinds`` it can be, or None. Booleans are not numbers."""
    for kind in kinds:
        converted = _convert_one(value, kind)
        if converted is not None:
            return converted
    return None


def _convert_one(value: Value, kind: str) -> Value | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOL:
        return value if isinstance(value, bool) else None
    if kind == INT:
        return value if integer else None
    if kind == FLOAT:
        return float(value) if number else None
    if kind == STR:
        return value if isinstance(value, str) else None
    if kind == PAIRS:
        return _pairs(value)
    if isinstance(value, tuple):
        if any(isinstance(item, tuple) for item in value):
            return None  # a list of lists: only PAIRS takes one
        items = [_convert_one(item, INT if kind == INTS else NUMS) for item in value]
        return tuple(items) if items and None not in items else None
    if kind == INTS:
        return value if integer else None
    return value if number else None  # NUMS


def _pairs(value: Value) -> Value | None:
    """An integer, or a non-empty list of integers and [before, after] pairs of integers."""
    if not isinstance(value, tuple):
        return _convert_one(value, INT)
    for item in value:
        pair = item if isinstance(item, tuple) else None
        if pair is not None and len(pair) != 2:
            return None
        if any(_convert_one(x, INT) is None for x in pair or (item,)):
            return None
    return value or None


# --- shapes through a pipeline ---------------------------------------------------------

_RANK_NAMES = {
    1: "a vector [C]",
    2: "a signal [C, L]",
    3: "an image [C, H, W]",
    4: "a volume [C, D, H, W]",
}


def combined_shape(shapes: list[Shape]) -> Shape | None:
    """The shape of inputs combined by ``add`` / ``mul``, or None if they do not fit.

    All inputs have one shape, except that ``[C]`` vectors broadcast over the spatial
    axes of the others (a per-channel gate or bias).
    """
    full = max(shapes, key=len)
    for shape in shapes:
        if shape != full and shape != full[:1]:
            return None
    return full


def _describe_rank(spec: OpSpec) -> str:
    lo, hi = spec.ranks
    if lo == 1 and hi >= 4:
        return "a vector, signal, image or volume"
    words = [_RANK_NAMES.get(r, f"rank {r}") for r in range(lo, min(hi, 4) + 1)]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _apply(op: Op, before: Shape, target, *, checked: bool) -> Shape:
    spec = OPS[op.kind]
    lo, hi = spec.ranks
    if not lo <= len(before) <= hi:
        raise OpError(f"{op.kind} needs {_describe_rank(spec)}, got {format_shape(before)}")
    try:
        after = spec.shape(op.args, before, target)
        if checked:
            spec.check(op.args, before, after)
        # NOTE: counted only where a size is symbolic, off the path of other machines
        symbolic = checked and any(isinstance(n, Size) for n in (*before, *after))
        params = spec.params(op.args, before, after) if symbolic else 0
    except SymbolicSizeError as exc:
        raise OpError(
            f"{op.kind} needs sizes known when the machine is compiled: {exc}",
            hint="declare the input's sizes as numbers, or change the op",
        ) from None
    if isinstance(params, Size):
        raise OpError(
            f"{op.kind} on {format_shape(before)} would have {params} parameters: their number "
            "would depend on sizes known only at call time",
            hint="pool the spatial axes away first (global_avg_pool, adaptive_avg_pool), or "
            "declare the input's sizes as numbers",
        )
    return after


def _needs_target(op: Op) -> bool:
    spec = OPS[op.kind]
    if not spec.changes_channels:
        return False
    return op.args.get("shape" if spec.extra_args else "out") is None


class NeedsOutputs(OpError):
    """Op ``index`` takes its size from the edge's outputs, whose shape is not known (it is
    being inferred): the pipeline alone does not tell its shape."""


def infer_pipeline(
    ops: tuple[Op, ...], entering: Shape, declared: Shape | None
) -> tuple[Shape, ...]:
    """Shapes entering each op and leaving the last; raises :class:`OpError`.

    ``declared`` is the shape of the edge's outputs; None when it is to be inferred from
    this pipeline: then nothing is compared, and an op that would take its size from the
    outputs raises :class:`NeedsOutputs`.
    """
    for i, op in enumerate(ops):
        if OPS[op.kind].combine and i > 0:
            raise OpError(
                f"{op.kind} combines the edge's inputs, so it must be the first op of the pipeline",
                index=i,
            )
    changers = [i for i, op in enumerate(ops) if OPS[op.kind].changes_channels]
    last_changer = changers[-1] if changers else None
    shapes = [entering]
    hint = None
    for i, op in enumerate(ops):
        target = None
        if _needs_target(op):
            if i != last_changer:
                what = "shape=[...]" if OPS[op.kind].extra_args else "out=N"
                raise OpError(
                    f"{op.kind} needs {what.split('=')[0]}= here: only the last channel-changing "
                    "op of a pipeline takes its size from the edge's outputs",
                    index=i,
                    hint=f"write {op.kind}({what})",
                )
            if declared is None:
                what = "shape=" if OPS[op.kind].extra_args else "out="
                raise NeedsOutputs(
                    f"{op.kind} takes its size from the edge's outputs (it has no {what})",
                    index=i,
                )
            target, hint = _solve_target(ops, i, shapes[-1], declared)
        try:
            shapes.append(_apply(op, shapes[-1], target, checked=True))
        except OpError as exc:
            later = hint if _hint_applies(ops, last_changer, i, shapes[-1]) else None
            raise OpError(exc.message, index=i, hint=exc.hint or later) from None
    if declared is not None and shapes[-1] != declared:
        steps = " -> ".join(
            [format_shape(entering)]
            + [
                f"{op.kind} {format_shape(shape)}"
                for op, shape in zip(ops, shapes[1:], strict=True)
            ]
        )
        if hint is None and last_changer is None and shapes[-1][1:] == declared[1:]:
            hint = "no op of this pipeline changes the channels; add a linear to map between them"
        if hint is None and any(isinstance(n, Size) for n in (*shapes[-1], *declared)):
            hint = (
                "sizes known only at call time must be equal for every size the inputs may "
                "have (or for some, checked on each call); these never are"
            )
        raise OpError(
            f"the pipeline produces {format_shape(shapes[-1])}, but the outputs need "
            f"{format_shape(declared)} ({steps})",
            index=None,
            hint=hint,
        )
    return tuple(shapes)


def _hint_applies(ops, changer: int | None, i: int, before: Shape) -> bool:
    """Whether the solver's hint (give out= / shape=) can fix op ``i`` failing on ``before``.

    Only for ops after the last channel-changing op; ``out=`` fixes a channel count, not a
    rank, while a module's ``shape=`` fixes both.
    """
    if changer is None or i <= changer:
        return False
    lo, hi = OPS[ops[i].kind].ranks
    return OPS[ops[changer].kind].extra_args or lo <= len(before) <= hi


def _solve_target(ops, i: int, before: Shape, declared: Shape):
    """What the last channel-changing op must produce so that the pipeline ends at ``declared``.

    The ops after it map channel counts c -> c (most ops) or c -> c·k (``flatten``); the
    count is found by running them for two trial values. Returns (target, hint).
    """
    op = ops[i]
    rest = ops[i + 1 :]
    if OPS[op.kind].extra_args:  # module: its output is the shape the later ops keep
        hint = f"give {op.kind}(..., shape=[...]): the ops after it change the shape"
        return declared, (None if _run(rest, declared) == declared else hint)
    finals = [_run(rest, _apply_free(op, before, c)) for c in (1, 2)]
    hint = f"give {op.kind}(out=N): the channel count could not be inferred from the outputs"
    if None in finals or finals[1][0] != 2 * finals[0][0]:
        return declared[0], hint
    per_channel = finals[0][0]
    if not isinstance(per_channel, int) or not isinstance(declared[0], int):
        return declared[0], hint  # a factor known only at call time (flatten of [c, L])
    if declared[0] % per_channel:
        raise OpError(
            f"{op.kind} cannot produce the {declared[0]} channels the outputs need: the ops "
            f"after it multiply its channels by {per_channel}",
            index=i,
            hint=f"give {op.kind}(out=N), or change the outputs' shape",
        )
    return declared[0] // per_channel, None


def _apply_free(op: Op, before: Shape, target) -> Shape | None:
    try:
        return _apply(op, before, target, checked=False)
    except OpError:
        return None


def _run(ops, shape: Shape | None) -> Shape | None:
    """The shape after ``ops`` without channel checks, or None where an op fails."""
    for op in ops:
        if shape is None:
            return None
        shape = _apply_free(op, shape, None)
    return shape
