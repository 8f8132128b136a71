"""Step loops that ``torch.compile`` and ``torch.export`` keep as loops.

Generated code writes a step loop of a machine over time as a function of one
step and hands it to :func:`recur`::

    def step(carry, inputs):
        (h_tm1,) = carry          # h[t-1]
        (cell_x_t,) = inputs      # this step of a sequence computed before the loop
        h = torch.tanh(cell_x_t + F.linear(h_tm1, cell_w_h))
        return (h,), (h,)         # the next carry, and this step's values to keep

    _, (h,) = runtime.recur(step, (h_past[-1],), (cell_x,), batch, steps)

In eager mode :func:`recur` is a plain Python loop over the steps (fast, and a
breakpoint in ``step`` stops at every step). While ``torch.compile`` or
``torch.export`` trace it, it is PyTorch's ``scan`` operator: one loop in the
graph whatever the number of steps, so one compiled graph serves every
sequence length and an exported program (or ONNX file, a ``Scan``) takes a
dynamic time axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Step = Callable[
    [tuple[Tensor, ...], tuple[Tensor | None, ...]],
    tuple[tuple[Tensor, ...], tuple[Tensor, ...]],
]


def recur(
    step: Step,
    init: Sequence[Tensor],
    xs: Sequence[Tensor | None],
    batch: int,
    steps: int,
    reverse: bool = False,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(carry, ys)``: ``step`` applied at every step, forward (or backward) in time.

    ``init`` holds the carry before the first step (``[batch, *shape]`` each); ``xs``
    folded sequences ``[batch * steps, *shape]`` given to ``step`` one step at a time
    (``None`` stays ``None``); ``step(carry, xs_t)`` returns the next carry and this
    step's values ``ys_t``. Returns the last carry and each of the ``ys`` as a folded
    sequence in time order (also when ``reverse``, where step ``steps - 1`` runs first).
    """
    seqs = [None if x is None else x.unflatten(0, (batch, steps)) for x in xs]
    if _tracing() and not (type(steps) is int and steps == 1):
        carry, ys = _scan(step, tuple(init), seqs, steps, reverse)
    else:
        carry, ys = _loop(step, tuple(init), seqs, steps, reverse)
    return carry, tuple(_fold(y) for y in ys)


def _tracing() -> bool:
    """Whether torch.compile or torch.export is tracing (tests force the scan path here)."""
    return torch.compiler.is_compiling()


def _loop(step: Step, carry, seqs, steps: int, reverse: bool):
    # one unbind per sequence: its backward is one stack, where indexing a step at a
    # time would make autograd quadratic in the steps
    per_step = [(None,) * steps if s is None else s.unbind(1) for s in seqs]
    outs: list = [None] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        carry, outs[t] = step(carry, tuple(p[t] for p in per_step))
    if not outs[0]:
        return tuple(carry), ()
    return tuple(carry), tuple(torch.stack(y, 1) for y in zip(*outs, strict=True))


# torch 2.13 and 2.14's inductor may overwrite a tensor saved for the backward of a
# graph holding two or more scans (it applies the top-level graph's donated buffers to
# the loop body's inputs: pytorch/pytorch#153679, fixed by #193960): the gradients come
# out wrong, silently. Donated buffers only save memory in the backward.
_DONATION_BUG = torch.torch_version.TorchVersion(torch.__version__) < (2, 15)


@torch.compiler.assume_constant_result
def _avoid_donation_bug() -> bool:
    """Turn off inductor's donated buffers in the backward (pytorch/pytorch#153679).

    Called while Dynamo traces a loop, it runs then, before the graph is compiled (an
    ``assume_constant_result`` function runs at trace time), and it stays off for the
    process: docs/integration.md.
    """
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False
    return True


def _scan(step: Step, init, seqs, steps: int, reverse: bool):
    from torch._higher_order_ops.scan import scan

    if _DONATION_BUG:
        _avoid_donation_bug()

    present = [i for i, s in enumerate(seqs) if s is not None]
    dtypes = [c.dtype for c in init]

    def body(carry, xs_t):
        given = [None] * len(seqs)
        # (with no sequence present, xs_t is the step count's slice alone: nothing to give)
        for i, x in zip(present, xs_t, strict=False):
            given[i] = x
        carry, ys_t = step(carry, tuple(given))
        # scan wants outputs that alias nothing (an input, another output), and
        # inductor's autograd refuses a carry it also saves for the backward unless
        # it is a copy: copy them all (inductor fuses the copies away). The carry
        # keeps the init's dtype, which autocast could otherwise change.
        carry = tuple(c.to(d, copy=True) for c, d in zip(carry, dtypes, strict=True))
        return carry, tuple(y.clone() for y in ys_t)

    # distinct initial tensors: a past of zeros is one tensor several times
    init = tuple(c.clone() for c in init)
    xs = tuple(seqs[i] for i in present)
    if not xs:  # scan counts the steps of its sequences: give it one, of nothing
        xs = (init[0].new_zeros((1, steps)),)
    carry, ys = scan(body, init, xs, dim=1, reverse=reverse)
    return carry, ys


def _fold(y: Tensor) -> Tensor:
    """``[batch, steps, *shape]`` folded to ``[batch * steps, *shape]``; while tracing, a
    contiguous copy: torch.export cannot prove that a view of a view of a dynamic time
    axis is contiguous when generated code unfolds it again (torch 2.13)."""
    if _tracing():
        return y.flatten(0, 1).clone(memory_format=torch.contiguous_format)
    return y.flatten(0, 1)


def valid_steps(lengths: Tensor | None, batch: int, steps: int) -> Tensor | None:
    """The folded ``[batch * steps]`` mask of steps within each sequence's length."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]).flatten()


def keep_valid(x: Tensor, valid: Tensor | None) -> Tensor:
    """``x`` (one step ``[batch, *shape]``, or a folded sequence), zero where ``valid``
    (``[batch]``, or folded ``[batch * steps]``) is false; ``x`` itself if ``valid`` is None."""
    if valid is None:
        return x
    valid = valid.to(x.device).view(-1, *(1,) * (x.dim() - 1))
    return torch.where(valid, x, x.new_zeros(()))
