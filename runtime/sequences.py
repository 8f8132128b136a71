"""Sequence machines: attention over windows of steps, histories, positions and lengths.

Folded sequences are ``[batch * steps, *shape]``, batch-major (see the package
docstring). A *history* is the steps of a space a causal or sliding window
will read again in a later call (``[batch, seen, *shape]``, oldest first): the
keys and values cache of a transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loops import keep_valid, valid_steps


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    batch: int,
    steps: int,
    *,
    causal: bool = False,
    size: int | None = None,
    past: tuple[Tensor, Tensor] | None = None,
    lengths: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Multi-head scaled dot-product attention of every step's query over a window of keys.

    ``q``, ``k``, ``v`` are folded sequences; heads are contiguous blocks of features
    (as in ``nn.MultiheadAttention``). ``causal``: step ``t`` reads keys up to ``t``
    (``k[0..t]``), and with ``size`` only from ``t - size`` on (``k[t-w..t]``);
    otherwise every step (``k[..]``). ``past`` holds earlier keys and values (the
    history of a previous call), which come before step 0. ``lengths`` masks the keys
    past each sequence's length. Returns the folded values ``[batch * steps, dv]``.
    """
    d, dv = q.shape[-1], v.shape[-1]
    q = q.unflatten(0, (batch, steps)).unflatten(-1, (heads, d // heads)).transpose(1, 2)
    k, v = k.unflatten(0, (batch, steps)), v.unflatten(0, (batch, steps))
    seen = 0
    if past is not None:
        past_k, past_v = past
        # Keys and values may keep histories of different lengths (a space that other
        # windows read too keeps more): this window reads the same last steps of both.
        seen = min(past_k.shape[1], past_v.shape[1], *(() if size is None else (size,)))
        if seen:
            k = torch.cat([past_k[:, past_k.shape[1] - seen :], k], 1)
            v = torch.cat([past_v[:, past_v.shape[1] - seen :], v], 1)
    k = k.unflatten(-1, (heads, d // heads)).transpose(1, 2)
    v = v.unflatten(-1, (heads, dv // heads)).transpose(1, 2)
    plain_causal = causal and size is None and not seen and lengths is None
    mask = None if plain_causal else _mask(steps, seen, causal, size, lengths, q.device)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout if training else 0.0,
        is_causal=plain_causal,
    )
    return out.transpose(1, 2).flatten(2).flatten(0, 1)


def _mask(steps, seen, causal, size, lengths, device) -> Tensor | None:
    """Which keys each query reads: ``[batch or 1, 1, steps, seen + steps]`` booleans."""
    if not causal and lengths is None:
        return None
    query = torch.arange(steps, device=device)[:, None] + seen
    key = torch.arange(seen + steps, device=device)[None, :]
    allowed = torch.ones((steps, seen + steps), dtype=torch.bool, device=device)
    if causal:
        allowed = key <= query
        if size is not None:
            allowed = allowed & (key >= query - size)
    if lengths is None:
        return allowed[None, None]
    lengths = lengths.to(device)[:, None, None]
    valid_key = key[None] < lengths + seen
    valid_query = query[None] < lengths + seen
    # A padded step's query reads every valid key: its output is masked later, and a
    # row with no key at all would be NaN (and NaN gradients) in softmax.
    return torch.where(valid_query, allowed[None] & valid_key, valid_key)[:, None]


def check_lengths(lengths: Tensor | None, batch: int, steps: int) -> Tensor | None:
    """``lengths`` as given, after checking it is ``[batch]`` integers in ``1..steps``."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor) or lengths.shape != (batch,):
        got = list(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be a tensor [batch] = [{batch}], got {got}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if torch.compiler.is_compiling():  # the values are data: checked when the graph runs
        valid = ((lengths >= 1) & (lengths <= steps)).all()
        torch._assert_async(valid, "lengths must be in 1..steps (the steps)")
        return lengths
    if bool(lengths.min() < 1) or bool(lengths.max() > steps):
        raise ValueError(
            f"lengths must be in 1..{steps} (the steps), got {int(lengths.min())} to "
            f"{int(lengths.max())}"
        )
    return lengths


def mask_steps(x: Tensor, lengths: Tensor | None, batch: int, steps: int) -> Tensor:
    """The folded sequence ``x`` with the steps past each sequence's length set to zero."""
    return keep_valid(x, valid_steps(lengths, batch, steps))


def no_chunks(machine: str, state: object, return_state: bool) -> None:
    """A machine that reads later steps has no state to resume from."""
    if state is not None or return_state:
        raise ValueError(
            f"{machine} reads later steps (h[t+k] or a window k[..]), so it cannot run in "
            "chunks: state= and return_state= need a causal machine"
        )


def no_lengths_in_chunks(lengths: Tensor | None, state: object, return_state: bool) -> None:
    """Histories (key and value caches) and step counts are shared by the whole batch."""
    if lengths is not None and (state is not None or return_state):
        raise ValueError(
            "lengths= cannot be combined with state= or return_state= on a machine with "
            "attention windows or positions: its history and step count are one for the "
            "whole batch; run sequences of different lengths in separate calls"
        )


def history(
    state: dict[str, Tensor] | None,
    name: str,
    shape: tuple[int, ...],
    batch: int,
    like: Tensor,
) -> Tensor:
    """The steps of space ``name`` that windows of this call read before step 0."""
    if state is None or name not in state:
        return like.new_zeros((batch, 0, *shape))
    given = state[name]
    if (
        not isinstance(given, Tensor)
        or given.dim() != 2 + len(shape)
        or (given.shape[0] != batch or tuple(given.shape[2:]) != tuple(shape))
    ):
        want = ", ".join(map(str, (batch, "seen", *shape)))
        got = list(given.shape) if isinstance(given, Tensor) else type(given).__name__
        raise ValueError(f"state[{name!r}] must be [{want}] (batch, steps, shape), got {got}")
    return given


def recent(seen: Tensor, k: int, batch: int, like: Tensor) -> tuple[Tensor, ...]:
    """The last ``k`` steps of a history as a past (zeros before the first step)."""
    steps = tuple(seen.unbind(1))[-k:]
    zero = like.new_zeros((batch, *seen.shape[2:]))
    return (zero,) * (k - len(steps)) + steps


def extend_history(seen: Tensor, x: Tensor, keep: int | None, batch: int, steps: int) -> Tensor:
    """The history after this call: the last ``keep`` steps (all if None) of both."""
    sequence = torch.cat([seen, x.unflatten(0, (batch, steps))], 1)
    return sequence if keep is None else sequence[:, -keep:]


def offset(state: dict[str, Tensor] | None, clock: str) -> int:
    """How many steps earlier calls ran (``state[clock]``), 0 without state."""
    if state is None or clock not in state:
        return 0
    return int(state[clock])


def positions(
    start: int, batch: int, steps: int, count: int, edge: str, where: str, like: Tensor
) -> Tensor:
    """The step numbers ``start .. start + steps - 1`` as folded ids, for an embedding of
    ``count`` positions."""
    if start + steps > count:
        raise IndexError(
            f"edge {edge!r} ({where}) embeds {count} positions, but this call reaches step "
            f"{start + steps - 1}: sequences (and chunks with state=) hold at most {count} "
            "steps"
        )
    return torch.arange(start, start + steps, device=like.device).repeat(batch)


def with_state(output, return_state: bool):
    """``(outputs, state)`` of a sub-machine called with ``return_state``; state None if not."""
    return output if return_state else (output, None)


def float_like(module: nn.Module, x: Tensor) -> Tensor:
    """A scalar with the module's floating dtype on ``x``'s device, for new tensors."""
    parameter = next((p for p in module.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
    return torch.zeros((), dtype=dtype, device=x.device)
