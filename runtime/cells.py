"""PyTorch's fused recurrent kernels, for step loops that are exactly one of its cells.

Where the compiler recognises a machine's step loop as ``torch.nn.RNN``'s,
``torch.nn.LSTM``'s or ``torch.nn.GRU``'s cell (the rewrite ``cells``,
docs/performance.md), generated ``forward`` assembles the kernel's weights from the
machine's own linears and calls :func:`cell`::

    w = torch.cat([self.gates.weight[:32], self.cand.weight, self.gates.weight[32:]])
    b = torch.cat([self.gates.bias[:32], self.cand.bias, self.gates.bias[32:]])
    h, h_c_last = runtime.cell("lstm", x, (h_past[-1], c_past[-1]), (w[:, :8], w[:, 8:], b),
                               batch, steps, lengths=lengths, last=return_state)

In eager mode that is one call of ``torch.lstm`` (``torch.rnn_tanh``, ``torch.rnn_relu``,
``torch.gru``) over the whole sequence. While ``torch.compile`` or ``torch.export`` trace
it, it is the cell's equations in a :func:`~machc.runtime.loops.recur` loop (PyTorch's
``scan``), as the step loop would be: one graph for every sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import loops

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def cell(
    kind: str,
    x: Tensor,
    hx: Sequence[Tensor | None],
    weights: Sequence[Tensor | None],
    batch: int,
    steps: int,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    last: bool = False,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """``(h, last_states)``: the cell ``kind`` run over the folded sequence ``x``.

    ``hx``: the states before the first step, ``[batch, m]`` each (``h``; an LSTM's
    ``h, c``), None for zeros; ``weights``: ``w_ih, w_hh`` and, if any, ``b_ih, b_hh``
    (a None bias is zeros), each in PyTorch's gate order. ``reverse`` runs backward in
    time, from each sequence's own last step (``lengths``); the hidden state is then zero
    at the padded steps, as a loop that keeps only valid steps leaves it. Returns ``h`` at
    every step, folded ``[batch * steps, m]``, and with ``last`` the states after each
    sequence's last step, ``[batch, 1, m]`` each (the state ``forward`` returns; without
    ``last``, None each).
    """
    if kind not in KINDS:
        raise ValueError(f"no such cell: {kind!r}; PyTorch fuses {list(KINDS)}")
    w_ih, w_hh = weights[0], weights[1]
    m = w_hh.shape[1]
    hx = tuple(x.new_zeros((batch, m)) if h is None else h for h in hx)
    biases = tuple(weights[2:])
    if any(b is not None for b in biases):
        b_ih, b_hh = (biases + (None,))[:2]
        rows = w_ih.shape[0]
        params = [w_ih, w_hh] + [x.new_zeros(rows) if b is None else b for b in (b_ih, b_hh)]
    else:
        params = [w_ih, w_hh]
    if loops._tracing():  # the step loop, on folded sequences as generated loops run
        out, states = _scan(kind, x, hx, params, batch, steps, reverse, lengths, last)
    else:
        seq = x.unflatten(0, (batch, steps))
        if reverse:
            seq = _reverse(seq, lengths)
        if last and lengths is not None and not reverse:
            out, states = _packed(kind, seq, hx, params, lengths)
        else:
            out, states = _kernel(kind, seq, hx, params)
        if reverse:
            out = _reverse(out, lengths)
        out = out.flatten(0, 1)
        if reverse and lengths is not None:
            out = loops.keep_valid(out, loops.valid_steps(lengths, batch, steps))
    if not last:
        return out, (None,) * len(hx)
    return out, tuple(s[:, None] for s in states)


def _hidden(kind: str, hx: tuple[Tensor, ...]):
    """The kernel's ``hx``: ``[1, batch, m]``, a pair of them for an LSTM."""
    if kind == "lstm":
        return tuple(h[None] for h in hx)
    return hx[0][None]


def _kernel(kind: str, seq: Tensor, hx: tuple[Tensor, ...], params: list[Tensor]):
    kernel = getattr(torch, kind)
    result = kernel(seq, _hidden(kind, hx), params, len(params) == 4, 1, 0.0, False, False, True)
    return result[0], tuple(h[0] for h in result[1:])


def _packed(kind: str, seq: Tensor, hx: tuple[Tensor, ...], params: list[Tensor], lengths):
    """With each sequence's own last step: PyTorch's packed sequences (the steps past a
    sequence's length come out zero: ``forward`` masks them, and they feed nothing)."""
    packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(h.index_select(0, order.to(h.device)) for h in hx)
    kernel = getattr(torch, kind)
    result = kernel(
        packed.data,
        packed.batch_sizes,
        _hidden(kind, hx),
        params,
        len(params) == 4,
        1,
        0.0,
        False,
        False,
    )
    out = packed._replace(data=result[0])
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=seq.shape[1])
    return out, tuple(h[0].index_select(0, back.to(h.device)) for h in result[1:])


def _scan(kind: str, x: Tensor, hx, params: list[Tensor], batch, steps, reverse, lengths, last):
    """The cell's equations (as PyTorch documents them) in a step loop, for tracing: as
    the generated loop runs, backward in time from each sequence's own last step (the
    states are zero at padded steps)."""
    w_ih, w_hh = params[0], params[1].clone()  # a scan body may not close over aliases
    b_ih, b_hh = (params[2], params[3].clone()) if len(params) == 4 else (None, None)
    projected = F.linear(x, w_ih, b_ih)
    valid = loops.valid_steps(lengths, batch, steps) if reverse else None

    def step(carry, inputs):
        x_t, valid_t = inputs
        h = carry[0]
        recurrent = F.linear(h, w_hh, b_hh)
        if kind == "lstm":
            i, f, g, o = (x_t + recurrent).chunk(4, 1)
            c = torch.sigmoid(f) * carry[1] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            states = (h, c)
        elif kind == "gru":
            x_r, x_z, x_n = x_t.chunk(3, 1)
            h_r, h_z, h_n = recurrent.chunk(3, 1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            states = ((1 - z) * n + z * h,)
        else:
            pre = x_t + recurrent
            states = (torch.tanh(pre) if kind == "rnn_tanh" else torch.relu(pre),)
        states = tuple(loops.keep_valid(s, valid_t) for s in states)
        return states, states

    carry, ys = loops.recur(step, hx, (projected, valid), batch, steps, reverse=reverse)
    if not last or lengths is None:
        return ys[0], carry
    ends = lengths.to(x.device) - 1
    rows = torch.arange(batch, device=x.device)
    return ys[0], tuple(y.unflatten(0, (batch, steps))[rows, ends] for y in ys)


def _reverse(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """``[batch, steps, ...]`` with each sequence's valid steps in reverse order (the
    padded steps stay where they are); its own inverse."""
    if lengths is None:
        return seq.flip(1)
    steps = seq.shape[1]
    t = torch.arange(steps, device=seq.device)[None, :]
    ends = lengths.to(seq.device)[:, None]
    index = torch.where(t < ends, ends - 1 - t, t)
    index = index.view(*index.shape, *(1,) * (seq.dim() - 2)).expand_as(seq)
    return seq.gather(1, index)
