"""machc.runtime: the support library of generated code.

Torch only: it never imports the compiler. Generated modules import it only
where they need it: the ``module("package.module.Class", ...)`` op, which
builds a user's own ``nn.Module`` and checks the shape it returns, and
machines over time, whose sequences are folded, shifted and cut into steps
here.

Machines over time take tensors ``[batch, time, *shape]``. Before and after
the step loop, generated code works on *folded* sequences ``[batch * steps,
*shape]`` (time folded into the batch, so every op applies unchanged); in the
loop, on one step ``[batch, *shape]`` at a time. The *past* of a space read
``k`` steps ago is a tuple of its last ``k`` steps before the call, oldest
first.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .adjoint import pull_cycle
from .cells import cell
from .checkpoints import LoopCheckpoints
from .equilibrium import SOLVERS, Solve, reset_spectral_norm
from .loops import keep_valid, recur, valid_steps
from .regroup import Columns, regroup
from .sequences import (
    attention,
    check_lengths,
    extend_history,
    float_like,
    history,
    mask_steps,
    no_chunks,
    no_lengths_in_chunks,
    offset,
    positions,
    recent,
    with_state,
)
from .sizes import SizeError, bind_sizes, check_size

__all__ = [
    "SOLVERS",
    "Columns",
    "LoopCheckpoints",
    "MachineShapeError",
    "SizeError",
    "Solve",
    "pull_cycle",
    "reset_spectral_norm",
    "attention",
    "bind_sizes",
    "cell",
    "check_lengths",
    "check_shape",
    "check_size",
    "check_state",
    "delayed",
    "extend_history",
    "external",
    "float_like",
    "fold_inputs",
    "fold_state",
    "folded",
    "history",
    "keep_valid",
    "last_steps",
    "mask_steps",
    "no_chunks",
    "no_lengths_in_chunks",
    "offset",
    "past",
    "positions",
    "recent",
    "regroup",
    "recur",
    "step_of",
    "unfold_steps",
    "valid_steps",
    "with_state",
]


class MachineShapeError(RuntimeError):
    """A user module returned a tensor of another shape than its edge declares."""


def external(path: str, *args, edge: str, where: str, **kwargs) -> nn.Module:
    """``Class(*args, **kwargs)`` for the class at the dotted ``path``, for edge ``edge``.

    Import and construction errors name the edge and its ``.mach`` line ``where``.
    """
    module_name, _, class_name = path.rpartition(".")
    context = f"edge {edge!r} ({where}): module({path!r})"
    try:
        module = importlib.import_module(module_name)
    except (ImportError, RecursionError) as exc:  # a path too deep for the import system
        raise ImportError(f"{context}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"{context}: {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{context}: {path!r} is not an nn.Module class")
    try:
        return cls(*args, **kwargs)
    except Exception as exc:
        raise TypeError(f"{context}: constructing {class_name} failed: {exc}") from exc


def check_shape(output: object, shape: tuple[int, ...], edge: str, where: str) -> Tensor:
    """``output`` if it is a tensor of per-sample ``shape``; otherwise a clear error."""
    if not isinstance(output, Tensor):
        raise MachineShapeError(
            f"edge {edge!r} ({where}): the module returned {type(output).__name__}, "
            f"not a tensor of shape [batch, {', '.join(map(str, shape))}]"
        )
    if tuple(output.shape[1:]) != tuple(shape):
        got = ", ".join(map(str, output.shape))
        raise MachineShapeError(
            f"edge {edge!r} ({where}): the module returned a tensor of shape [{got}], "
            f"but the edge needs [batch, {', '.join(map(str, shape))}]"
        )
    return output


# --- machines over time -------------------------------------------------------------


def _sequence_error(name: str, shape: tuple[int, ...], got: Tensor) -> ValueError:
    want = ", ".join(["batch", "time", *map(str, shape)])
    return ValueError(f"{name!r} must be a tensor [{want}], got shape {list(got.shape)}")


def fold_inputs(
    spaces: dict[str, tuple[int, ...]],
    given: dict[str, Tensor],
    steps: int | None,
    ids: dict[str, int] | None = None,
) -> tuple[int, int, tuple[Tensor, ...]]:
    """``(batch, steps, folded)`` for the input sequences ``given``.

    Every input is ``[batch, time, *shape]`` with one batch and one length (an ids
    space, named in ``ids`` with its number of ids, is a ``[batch, time]`` integer
    tensor); it is cut or padded with zeros (the machine runs on with zero input) to
    ``steps`` steps (default: the inputs' length), then folded to ``[batch * steps,
    *shape]``.
    """
    batch = length = None
    for name, x in given.items():
        if not isinstance(x, Tensor) or tuple(x.shape[2:]) != spaces[name] or x.dim() < 2:
            raise _sequence_error(name, spaces[name], x)
        if ids and name in ids:
            _check_ids(name, x, ids[name])
        if batch is None:
            batch, length = x.shape[0], x.shape[1]
        elif (x.shape[0], x.shape[1]) != (batch, length):
            raise ValueError(
                f"the inputs disagree on batch and time: {name!r} is {list(x.shape)}, "
                f"others [{batch}, {length}, ...]"
            )
    steps = length if steps is None else steps
    # a torch.SymInt while torch.export traces a dynamic time axis
    if not isinstance(steps, int | torch.SymInt) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    folded = []
    for x in given.values():
        if steps > length:
            x = torch.cat([x, x.new_zeros((batch, steps - length, *x.shape[2:]))], 1)
        elif steps < length:
            x = x[:, :steps]
        folded.append(x.flatten(0, 1))
    return batch, steps, tuple(folded)


def _check_ids(name: str, x: Tensor, count: int) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name!r} holds ids: it must be an integer tensor, got {x.dtype}")
    # NOTE: a check of the values: not while torch.compile / torch.export trace (it would
    # need the data), where out-of-range ids fail in the embedding instead.
    if torch.compiler.is_compiling():
        return
    if x.numel() and (bool(x.min() < 0) or bool(x.max() >= count)):
        raise ValueError(
            f"{name!r} holds ids in [0, {count}), got ids from {int(x.min())} to {int(x.max())}"
        )


def fold_state(
    spaces: dict[str, tuple[int, ...]],
    state: dict[str, Tensor],
    ids: dict[str, int] | None = None,
    module: nn.Module | None = None,
) -> tuple[int, int, dict[str, Tensor]]:
    """``(batch, steps, folded)`` for a space-time state: every space, zeros where missing.

    Ids spaces have no zero, so a state must give them; when it gives only ids, the
    zeros take the floating dtype of ``module``'s parameters.
    """
    unknown = sorted(set(state) - set(spaces))
    if unknown:
        raise KeyError(f"no such spaces: {unknown}; the machine has {list(spaces)}")
    missing = sorted(set(ids or {}) - set(state))
    if missing:
        raise KeyError(f"give the ids spaces {missing}: ids have no zero to stand in for them")
    if not state:
        raise ValueError("give at least one space: it sets the batch, the steps, dtype and device")
    batch, steps, folded = fold_inputs(spaces, state, None, ids)
    given = dict(zip(state, folded, strict=True))
    like = next((x for name, x in given.items() if not (ids and name in ids)), None)
    if like is None:
        like = float_like(module, folded[0]) if module is not None else folded[0].float()
    return (
        batch,
        steps,
        {
            name: given[name] if name in given else like.new_zeros((batch * steps, *shape))
            for name, shape in spaces.items()
        },
    )


def check_state(
    delays: dict[str, int],
    state: dict[str, Tensor] | None,
    stateful: tuple[str, ...] = (),
    windows: dict[str, int | None] | None = None,
    clock: str | None = None,
) -> None:
    """A state passed to ``forward`` names only spaces read at earlier steps or through
    windows, edges whose sub-machines are over time (their own state), and the step
    count ``clock`` of a machine that embeds positions."""
    if state is None:
        return
    known = sorted({*delays, *(windows or {})}) + sorted(stateful)
    if clock is not None:
        known.append(clock)
    unknown = sorted(set(state) - set(known))
    if unknown:
        raise KeyError(
            f"state has {unknown}, but only {known} are read at earlier steps or carry "
            "a sub-machine's state; pass the state returned by forward(..., return_state=True)"
        )


def folded(output):
    """A sub-machine's output sequences ``[batch, time, *shape]`` folded to
    ``[batch * time, *shape]`` (one tensor, or a tuple of them)."""
    if isinstance(output, Tensor):
        return output.flatten(0, 1)
    return tuple(x.flatten(0, 1) for x in output)


def step_of(output):
    """The one step ``[batch, *shape]`` of a sub-machine's output run for one step."""
    if isinstance(output, Tensor):
        return output[:, 0]
    return tuple(x[:, 0] for x in output)


def past(
    state: dict[str, Tensor] | None,
    name: str,
    shape: tuple[int, ...],
    depth: int,
    batch: int,
    like: Tensor,
) -> tuple[Tensor, ...]:
    """The last ``depth`` steps of space ``name`` before this call: from ``state``, or zeros."""
    if state is None or name not in state:
        zero = like.new_zeros((batch, *shape))
        return (zero,) * depth
    given = state[name]
    if not isinstance(given, Tensor) or tuple(given.shape) != (batch, depth, *shape):
        want = ", ".join(map(str, (batch, depth, *shape)))
        got = list(given.shape) if isinstance(given, Tensor) else type(given).__name__
        raise ValueError(f"state[{name!r}] must be [{want}] (batch, steps, shape), got {got}")
    return tuple(given.unbind(1))


def delayed(
    x: Tensor,
    k: int,
    past: Sequence[Tensor] | None,
    batch: int,
    steps: int,
    lengths: Tensor | None = None,
) -> Tensor:
    """The folded sequence ``x`` read ``k`` steps ago (``k < 0``: ``-k`` steps ahead).

    Before the first step comes the past (zeros if None); after the last step, and
    after each sequence's own length, zeros.
    """
    seq = x.unflatten(0, (batch, steps))
    if k < 0:
        seq = mask_steps(seq.flatten(0, 1), lengths, batch, steps).unflatten(0, (batch, steps))
        after = seq.new_zeros((batch, -k, *seq.shape[2:]))
        return torch.cat([seq, after], 1)[:, -k:].flatten(0, 1)
    if past is None:
        before = seq.new_zeros((batch, k, *seq.shape[2:]))
    else:
        before = torch.stack(tuple(past)[len(past) - k :], 1)
    return torch.cat([before, seq], 1)[:, :steps].flatten(0, 1)


def unfold_steps(x: Tensor | None, batch: int, steps: int) -> tuple[Tensor | None, ...]:
    """The folded sequence ``x`` as one ``[batch, *shape]`` tensor per step (``None``
    stays ``None`` at every step: the mask of steps when no ``lengths`` are given).

    ``unbind`` once, rather than indexing a step at a time: its backward is a single
    stack, where per-step indexing would make autograd quadratic in the steps.
    """
    if x is None:
        return (None,) * steps
    return x.unflatten(0, (batch, steps)).unbind(1)


def last_steps(
    x: Tensor,
    k: int,
    past: Sequence[Tensor],
    batch: int,
    steps: int,
    lengths: Tensor | None = None,
) -> Tensor:
    """The last ``k`` steps ``[batch, k, *shape]`` of the past followed by the sequence ``x``
    (with ``lengths``: the last ``k`` steps before each sequence's own end)."""
    seq = torch.cat([torch.stack(tuple(past), 1), x.unflatten(0, (batch, steps))], 1)
    return _ends(seq, k, len(past), lengths)


def _ends(seq: Tensor, k: int, before: int, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return seq[:, -k:]
    index = before + lengths.to(seq.device)[:, None] - k + torch.arange(k, device=seq.device)
    rows = torch.arange(seq.shape[0], device=seq.device)[:, None]
    return seq[rows, index]
