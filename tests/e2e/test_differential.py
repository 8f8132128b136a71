"""Differential test: generated code against the definition of the machine equation.

Hypothesis draws random acyclic machines (spaces, hyperedges with several inputs and
outputs, several edges into one space, edges into input spaces, pipelines of every
kind of op), renders them as ``.mach`` text, compiles and imports them. An oracle
written here from the drawn spec, never from generated code, then checks:

- ``f(state)`` against a reference ``f``: for every edge, cat its inputs in the order
  written, run its pipeline (the model's own layers, used only for their weights,
  through ``torch.nn.functional``), split into its outputs and add the pieces up;
- ``resolvent(x0)`` (``x0`` on a random subset of spaces) against the definition,
  ``depth + 1`` sweeps of ``x <- f(x) + x0`` (DESIGN.md section 4), and that it solves
  ``x = f(x) + x0``;
- ``forward(*inputs)`` against the naive resolvent of ``x0`` given on the inputs;
- gradients with respect to every parameter and every ``x0`` tensor, through
  ``resolvent`` and ``forward``, against autograd through the naive iteration;
- the class attributes (``SPACES``, ``INPUTS``, ``OUTPUTS``) and the layers
  (attribute per edge, ``nn.ModuleList`` in pipeline order, sizes, bias, eps);
- over time, on space-time states: delayed reads ``h[t-k]`` and reads of the future
  ``h[t+k]`` are shifts along the time axis (zero outside the steps), attention reads
  windows ``k[0..t]``, ``k[t-w..t]``, ``k[..]`` (written out here with an explicit mask),
  ids inputs and positions are embedded; the naive iteration runs one more sweep than the
  longest path of the unrolled space-time hypergraph, forward and backward in time alike.
  ``forward``'s state (``DELAYS``, ``WINDOWS``, the step count), chunks with ``state=``
  of causal machines (``CAUSAL``; the others refuse ``state=``), ``steps=`` and
  ``lengths=`` (each sequence alone, zero padded outputs and gradients);
- machines with solved cycles (``solve z with anderson(...)``): random contractive cycles
  of one to three spaces (their weights rescaled so that each cycle's map halves
  distances), one to three per machine, written from outside and read after, and used
  as edges of other machines; the naive iteration then runs until it settles, the Solve
  modules are checked, and an edge of a cycle writing outside it is E020;
- ``adjoint(x, ybar)`` at ``x = resolvent(x0)`` (machines not over time), against
  autograd of the naive iteration and of ``resolvent`` with ``x0`` on every space;
- ``backward=implicit`` against ``backward=unrolled`` on the same cyclic machines;
- machines with sizes known at call time (``input x : [2, H, W]``; hidden shapes in the
  symbols, written in several forms that agree for sizes that are multiples of 4, so
  that check records relations between them): one compiled module at two sizes of its
  symbols (``SPACES`` as text and ``shapes()`` against the spec there), its example
  inputs, a size where a relation breaks (``machc.runtime.SizeError``), one where they
  all hold though not a multiple of 4, and a symbol bound by two inputs to two sizes;
- edges inside ``if``s (a condition that holds, the ``else`` of one that does not, an
  ``else if``), whose branches not taken name nothing that exists.

Everything runs in float64 with tight tolerances, in eval mode. The bundled
examples go through the same oracle with hand-written specs.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import machc
import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from machc import runtime
from torch import nn
from torch.nn.utils import parametrize

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

RTOL = 1e-9
ATOL = 1e-11
# Over time, products of a space with its own past (h[t-1] * h[t-1] -> h) square the
# values and double their relative rounding error at every step.
RTOL_TIME = 1e-7
# Solved cycles stop at a relative residual of 1e-10 .. 1e-12; the distance to the fixed
# point is at most twice that (every cycle here halves distances).
RTOL_CYCLE = 1e-7
ATOL_CYCLE = 1e-9
# Autograd through a solver's iterations settles later than the iterations themselves.
RTOL_UNROLLED = 1e-6
ATOL_UNROLLED = 1e-8


# --- the spec of a machine ---------------------------------------------------------


# "machine": a machine used as an edge (its module is the edge's one "layer").
LAYER_KINDS = ("linear", "layernorm", "conv", "groupnorm", "batchnorm", "machine", "embedding")


@dataclass(frozen=True)
class Op:
    """One op of a pipeline, as the .mach source writes it and as the oracle applies it."""

    kind: str  # LAYER_KINDS, identity, dropout, add, mul, scale, attention, pooling, activation
    text: str = ""  # the op in .mach syntax (only needed to render random machines)
    out: int | None = None  # the channels a linear / conv makes (None: the edge's outputs)
    bias: bool = True  # linear(bias=...), conv(bias=...)
    spectral_norm: bool = False  # linear(spectral_norm=true): the weight over its largest
    # singular value (as estimated by the layer's power iteration)
    eps: float = 1e-5  # layernorm, groupnorm, batchnorm (eps=...)
    affine: bool = True  # layernorm(affine=...)
    arg: float | None = None  # leaky_relu's slope, elu's alpha, dropout's p, scale's factor
    kernel: int = 1  # conv, maxpool, avgpool: the window
    stride: int = 1  # conv(stride=...)
    padding: int | str = 0  # conv(padding=...): a number or "same"
    groups: int = 1  # groupnorm(groups)
    shape: tuple[int, ...] = ()  # reshape([...])
    heads: int = 1  # attention(heads=...)

    @property
    def has_layer(self) -> bool:
        return self.kind in LAYER_KINDS


@dataclass(frozen=True)
class Edge:
    name: str
    reads: tuple[str, ...]  # in the order written (a space may be read twice)
    writes: tuple[str, ...]  # in the order written
    ops: tuple[Op, ...]
    attr: str = ""  # the layer attribute; the edge name unless the compiler must rename it
    product: str = "×"
    arrow: str = "->"
    delays: tuple[int, ...] = ()  # per read, how many steps ago (over t; empty: all now;
    # negative: a read of the future, h[t+k] for -k)
    text: str = ""  # the pipeline as written, if not its ops' text: Sub(w=2), shared(e1)
    ranges: bool = False  # render runs of an array read at one delay as blk[1..2][t-1]
    # Per read, a window of steps (empty: none): None (one step), ("causal", 0) k[0..t],
    # ("sliding", w) k[t-w..t], ("full", 0) k[..]. Only attention reads windows.
    windows: tuple[tuple[str, int] | None, ...] = ()
    ctx: int = 0  # positions: the edge reads the time index itself (no space), ctx positions
    # Inside an if: ("if", COND) with COND true; ("else", COND) in the else of an if whose
    # COND is false, its other branch an edge that names nothing; ("elif", COND) in an
    # else if COND after a false one. Empty: not inside an if.
    guard: tuple[str, str] = ()

    @property
    def layer_attr(self) -> str:
        return self.attr or self.name

    @property
    def inputs(self) -> tuple[tuple[str, int], ...]:
        """(space, delay) per read, in the order written."""
        return tuple(zip(self.reads, self.delays or (0,) * len(self.reads), strict=True))

    @property
    def window_of(self) -> tuple[tuple[str, int] | None, ...]:
        """The window of steps per read (None: the step of its delay)."""
        return self.windows or (None,) * len(self.reads)

    def render_reads(self, time: str) -> str:
        if self.ctx:
            return time
        if any(self.window_of):
            return f" {self.product} ".join(
                name + (f"[{window_text(w, time)}]" if w else "")
                for name, w in zip(self.reads, self.window_of, strict=True)
            )
        factors: list[str] = []
        run: list[tuple[int, int]] = []  # a run of array elements read at one delay

        def flush() -> None:
            if len(run) > 1:
                factors.append(f"{FAMILY}[{run[0][0]}..{run[-1][0]}]{lag(run[0][1])}")
            elif run:
                factors.append(f"{FAMILY}[{run[0][0]}]{lag(run[0][1])}")
            run.clear()

        def lag(k: int) -> str:
            return f"[{time}-{k}]" if k > 0 else f"[{time}+{-k}]" if k < 0 else ""

        for name, k in self.inputs:
            element = re.fullmatch(rf"{FAMILY}\[(\d+)\]", name) if self.ranges else None
            if element and run and (run[-1][0] + 1, run[-1][1]) == (int(element[1]), k):
                run.append((int(element[1]), k))
                continue
            flush()
            if element:
                run.append((int(element[1]), k))
            else:
                factors.append(name + lag(k))
        flush()
        return f" {self.product} ".join(factors)


# An edge in the branch of an if that is not taken: never checked, so it may name
# spaces and ops that do not exist.
NOT_TAKEN = "nothing : nowhere -> nobody = no_such_op(1 // 0)"


def guarded(edge: Edge, line: str) -> list[str]:
    """The edge's line, inside the if its guard says (see Edge.guard)."""
    if not edge.guard:
        return [line]
    kind, cond = edge.guard
    if kind == "if":
        return [f"if {cond} {{", f"    {line}", "}"]
    if kind == "else":
        return [f"if {cond} {{ {NOT_TAKEN} }}", "else {", f"    {line}", "}"]
    return ["if 2 < 1 {", f"    {NOT_TAKEN}", f"}} else if {cond} {{", f"    {line}", "}"]


# Conditions that hold, and conditions that do not (every value decided when the machine
# is built); {k}: a parameter k = 2 of the machine, where it has one.
TRUE_CONDITIONS = ("true", "2 > 1", "not false", "3 % 2 == 1 and 4 >= 4", "min(2, 3) == 2")
FALSE_CONDITIONS = ("false", "1 > 2", "not true or 2 ** 3 == 7", "max(2, 3) != 3")


@st.composite
def guards(draw, param: str = "") -> tuple[str, str]:
    """Mostly no if; else an if that holds, the else of one that does not, or an else if."""
    kind = draw(st.sampled_from(["", "", "", "", "if", "else", "elif"]))
    if not kind:
        return ()
    true, false = list(TRUE_CONDITIONS), list(FALSE_CONDITIONS)
    if param:
        true += [f"{param} == 2", f"{param} % 2 == 0 and {param} > 1"]
        false += [f"{param} > 2", f"{param} == 3 or {param} < 0"]
    event(f"an edge in an if ({kind})")
    return (kind, draw(st.sampled_from(false if kind == "else" else true)))


def window_text(window: tuple[str, int], time: str) -> str:
    kind, w = window
    return {"causal": f"0..{time}", "sliding": f"{time}-{w}..{time}", "full": ".."}[kind]


@dataclass(frozen=True)
class Space:
    name: str
    size: int | tuple[int, ...]  # a vector's size, or a shape [C, *spatial]
    role: str  # input, space, output
    ids: int = 0  # ids(n): n ids, one per step ([batch, time] integers; shape ())

    @property
    def shape(self) -> tuple[int, ...]:
        if self.ids:
            return ()
        return self.size if isinstance(self.size, tuple) else (self.size,)


@dataclass(frozen=True)
class SolveItem:
    """``solve SPACE with SOLVER(...)``: the cycle through the space solved to its fixed point."""

    space: str
    solver: str  # fixed_point, anderson, broyden
    tol: float
    max_iter: int
    options: tuple[tuple[str, float | int], ...] = ()  # the solver's own: m, damping, lam
    backward: str = "implicit"
    say_backward: bool = False  # write backward=implicit (the default) too
    positional: bool = False  # tol and max_iter by position: anderson(1e-10, 300)

    @property
    def option_dict(self) -> dict[str, float | int]:
        return dict(self.options)

    def render(self) -> str:
        if self.positional:
            args = [f"{self.tol:g}", str(self.max_iter)]
        else:
            args = [f"tol={self.tol:g}", f"max_iter={self.max_iter}"]
        if self.say_backward or self.backward != "implicit":
            args.append(f"backward={self.backward}")
        args += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.options]
        return f"solve {self.space} with {self.solver}({', '.join(args)})"


@dataclass(frozen=True)
class Spec:
    name: str
    spaces: tuple[Space, ...]  # declaration order
    edges: tuple[Edge, ...]  # declaration order
    declarations: tuple[str, ...] = ()  # space lines of the rendered source
    over: str = ""  # the time variable of a machine over time
    params: str = ""  # the rendered parameter list, "(w: int = 2)"
    solves: tuple[SolveItem, ...] = ()  # one per cycle (machines not over time)

    @property
    def shape(self) -> dict[str, tuple[int, ...]]:
        return {s.name: s.shape for s in self.spaces}

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.spaces if s.role == "input")

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.spaces if s.role == "output")

    @property
    def ids(self) -> dict[str, int]:
        """The ids spaces and how many ids each holds."""
        return {s.name: s.ids for s in self.spaces if s.ids}

    @property
    def causal(self) -> bool:
        """Reads no later step: no h[t+k], no window k[..]."""
        return not any(
            k < 0 or (w is not None and w[0] == "full")
            for e in self.edges
            for k, w in zip(e.delays or (0,) * len(e.reads), e.window_of, strict=True)
        )

    def depth(self) -> int:
        """The length of the longest path of the hypergraph (any order of edges); over
        time, of the hypergraph within one step (delayed reads count as sources). Not for
        machines with solved cycles, whose paths go round."""
        assert not self.solves
        depth = {s.name: 0 for s in self.spaces}
        for _ in self.spaces:  # an acyclic graph settles within one pass per space
            for edge in self.edges:
                reached = 1 + max((depth[r] if k == 0 else 0 for r, k in edge.inputs), default=0)
                for w in edge.writes:
                    depth[w] = max(depth[w], reached)
        return max(depth.values())

    def render(self) -> str:
        over = f" over {self.over}" if self.over else ""
        if self.solves:
            lines = [f"# a random machine with {len(self.solves)} solved cycles"]
        else:
            lines = [f"# a random machine of depth {self.depth()}"]
        lines += [f"machine {self.name}{self.params}{over} {{"]
        lines += [f"    {line}" for line in self.declarations]
        for e in self.edges:
            reads = e.render_reads(self.over)
            writes = f" {e.product} ".join(e.writes)
            ops = e.text or " | ".join(op.text for op in e.ops)
            lines += [
                f"    {line}"
                for line in guarded(e, f"{e.name} : {reads} {e.arrow} {writes} = {ops}")
            ]
        lines += [f"    {solve.render()}" for solve in self.solves]
        lines.append("}")
        return "\n".join(lines) + "\n"


# --- the oracle ----------------------------------------------------------------------

ACTIVATIONS = {
    "relu": lambda x, arg: torch.relu(x),
    "gelu": lambda x, arg: F.gelu(x),
    "silu": lambda x, arg: x * torch.sigmoid(x),
    "tanh": lambda x, arg: torch.tanh(x),
    "sigmoid": lambda x, arg: torch.sigmoid(x),
    "softplus": lambda x, arg: F.softplus(x),
    "elu": lambda x, arg: F.elu(x, alpha=1.0 if arg is None else arg),
    "leaky_relu": lambda x, arg: F.leaky_relu(x, negative_slope=0.01 if arg is None else arg),
    "softmax": lambda x, arg: torch.softmax(x, dim=1),
}


def edge_layers(model: nn.Module, edge: Edge) -> list[nn.Module]:
    """The layers of an edge in pipeline order: one attribute, a ModuleList if several."""
    count = sum(op.has_layer for op in edge.ops)
    if count == 0:
        return []
    holder = model.get_submodule(edge.layer_attr)  # a loop kept as a loop: g.3, in g
    if count == 1:
        return [holder]
    assert isinstance(holder, nn.ModuleList), (edge.name, type(holder))
    assert len(holder) == count, (edge.name, len(holder))
    return list(holder)


CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [C] parameter (or a [B, C] tensor) viewed to broadcast over the axes of ``like``."""
    lead = t.shape if t.dim() == 2 else (1, t.shape[0])
    return t.reshape(*lead, *[1] * (like.dim() - 2))


def windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, C, *S] -> [B, C, *(S // k), k^d]: the non-overlapping k-windows of every axis."""
    d = x.dim() - 2
    for axis in range(2, 2 + d):
        x = x.unfold(axis, k, k)
    return x.flatten(-d)


def apply_pipeline(model: nn.Module, spec: Spec, edge: Edge, x: torch.Tensor) -> torch.Tensor:
    """The edge's ops on x, each written out with torch.nn.functional on the layer's weights."""
    layers = iter(edge_layers(model, edge))
    for op in edge.ops:
        d = x.dim() - 2  # spatial axes
        if op.kind == "linear" and d == 0:
            layer = next(layers)
            x = F.linear(x, layer.weight, layer.bias)
        elif op.kind == "linear":  # on the channel axis of every position
            layer = next(layers)
            x = torch.einsum("oi,bi...->bo...", layer.weight.flatten(1), x)
            x = x if layer.bias is None else x + per_channel(layer.bias, x)
        elif op.kind == "conv":
            layer = next(layers)
            padding = op.kernel // 2 if op.padding == "same" else op.padding
            x = CONVS[d](x, layer.weight, layer.bias, stride=op.stride, padding=padding)
        elif op.kind == "layernorm":
            layer = next(layers)
            x = F.layer_norm(x, x.shape[1:], layer.weight, layer.bias, op.eps)
        elif op.kind == "groupnorm":
            layer = next(layers)
            x = F.group_norm(x, op.groups, layer.weight, layer.bias, op.eps)
        elif op.kind == "batchnorm":  # eval mode: the running statistics
            layer = next(layers)
            mean, var = layer.running_mean, layer.running_var
            x = (x - per_channel(mean, x)) / torch.sqrt(per_channel(var, x) + op.eps)
            x = x * per_channel(layer.weight, x) + per_channel(layer.bias, x)
        elif op.kind == "maxpool":  # F's, not windows(): both break ties the same way
            x = MAX_POOLS[d](x, op.kernel)
        elif op.kind == "avgpool":
            x = windows(x, op.kernel).mean(-1)
        elif op.kind == "upsample":  # nearest, by 2
            for axis in range(2, 2 + d):
                x = x.repeat_interleave(2, dim=axis)
        elif op.kind == "global_avg_pool":
            x = x.flatten(2).mean(2)
        elif op.kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op.kind == "reshape":
            x = x.reshape(x.shape[0], *op.shape)
        elif op.kind == "embedding":  # ids [N] -> [N, out]: a row of the weight per id
            x = next(layers).weight[x]
        elif op.kind == "scale":
            x = x * op.arg
        elif op.kind in ("identity", "dropout", "add", "mul", "attention"):  # dropout: eval
            pass  # add and mul: done by combine(); attention: by reference_attention()
        else:
            x = ACTIVATIONS[op.kind](x, op.arg)
    return x


def combine(edge: Edge, xs: list[torch.Tensor]) -> torch.Tensor:
    """The edge's inputs as its first op sees them: concatenated, summed or multiplied."""
    kind = edge.ops[0].kind
    if kind not in ("add", "mul"):
        return torch.cat(xs, dim=1)
    full = max(xs, key=lambda t: t.dim())
    xs = [t if t.dim() == full.dim() else per_channel(t, full) for t in xs]
    result = xs[0]
    for t in xs[1:]:
        result = result + t if kind == "add" else result * t
    return result


def shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """[batch, time, *shape] -> the same, k steps later: out[:, t] = x[:, t - k], zero for t < k;
    for k < 0, -k steps earlier: out[:, t] = x[:, t - k], zero past the last step."""
    steps = x.shape[1]
    gap = x.new_zeros(x.shape[0], min(abs(k), steps), *x.shape[2:])
    if k < 0:
        return torch.cat([x[:, min(-k, steps) :], gap], dim=1)
    return torch.cat([gap, x[:, : max(steps - k, 0)]], dim=1)


def reference_attention(q, k, v, heads: int, window: tuple[str, int]) -> torch.Tensor:
    """[batch, time, d] queries, keys and [batch, time, dv] values -> [batch, time, dv]:
    step t's query against the keys of its window, head by head (contiguous blocks of
    features), softmax(q k^T / sqrt(d / heads)) v, written out with an explicit mask."""
    batch, steps, d = q.shape
    dv = v.shape[-1]
    q = q.reshape(batch, steps, heads, d // heads).transpose(1, 2)
    k = k.reshape(batch, steps, heads, d // heads).transpose(1, 2)
    v = v.reshape(batch, steps, heads, dv // heads).transpose(1, 2)
    scores = torch.einsum("bhtc,bhsc->bhts", q, k) / math.sqrt(d // heads)
    t = torch.arange(steps)[:, None]
    s = torch.arange(steps)[None, :]
    kind, w = window
    allowed = {"causal": s <= t, "sliding": (s <= t) & (s >= t - w), "full": s >= 0}[kind]
    scores = scores.masked_fill(~allowed, -math.inf)
    out = torch.einsum("bhts,bhsc->bhtc", torch.softmax(scores, dim=-1), v)
    return out.transpose(1, 2).reshape(batch, steps, dv)


def edge_outputs(model: nn.Module, spec: Spec, edge: Edge, xs: list) -> tuple:
    """One edge on its inputs ([batch, *shape] each): its contribution to each space it writes."""
    if edge.ops[0].kind == "machine":  # the sub-machine's own forward, inputs one by one
        (module,) = edge_layers(model, edge)
        result = module(*xs)
        return (result,) if isinstance(result, torch.Tensor) else tuple(result)
    y = apply_pipeline(model, spec, edge, combine(edge, xs))
    channels = [spec.shape[w][0] for w in edge.writes]
    assert y.shape[1] == sum(channels), edge.name
    return torch.split(y, channels, dim=1)


def reference_f(model: nn.Module, spec: Spec, state: dict) -> dict:
    """The sum of all edges, each extended by zeros, applied to a complete state.

    Over time, a space-time state holds [batch, time, *shape] tensors: a read h[t-k] is h
    shifted k steps along the time axis (zero before step 0), and every edge then acts on
    every step alike, so time is folded into the batch around it."""
    result = {s.name: torch.zeros_like(state[s.name]) for s in spec.spaces}  # ids: id 0
    lead = next(iter(state.values())).shape[: 2 if spec.over else 1]
    for edge in spec.edges:
        if edge.ops[0].kind in ("attention", "embedding"):
            parts = sequence_edge_outputs(model, spec, edge, state, lead)
            for w, part in zip(edge.writes, parts, strict=True):
                result[w] = result[w] + part.reshape(*lead, *part.shape[1:])
            continue
        xs = [shift(state[r], k) if spec.over else state[r] for r, k in edge.inputs]
        parts = edge_outputs(model, spec, edge, [x.reshape(-1, *x.shape[len(lead) :]) for x in xs])
        for w, part in zip(edge.writes, parts, strict=True):
            assert part.shape[1:] == spec.shape[w], (edge.name, w, part.shape)
            result[w] = result[w] + part.reshape(*lead, *part.shape[1:])
    return result


def sequence_edge_outputs(model, spec: Spec, edge: Edge, state: dict, lead) -> tuple:
    """An edge whose first op reads the edge's inputs its own way: attention (queries now,
    keys and values through a window, on whole sequences) or embedding (of an ids space,
    or of the step number)."""
    if edge.ops[0].kind == "attention":
        q, k, v = (state[r] for r in edge.reads)
        window = edge.window_of[1]
        x = reference_attention(q, k, v, edge.ops[0].heads, window).flatten(0, 1)
    elif edge.ctx:  # positions: step t embeds id t
        x = torch.arange(lead[1]).repeat(lead[0])
    else:
        ((r, k),) = edge.inputs
        x = shift(state[r], k).flatten(0, 1)
    y = apply_pipeline(model, spec, edge, x)
    return torch.split(y, [spec.shape[w][0] for w in edge.writes], dim=1)


def complete(spec: Spec, given: dict) -> dict:
    """Every space: the given tensors, zeros for the others (floating, like the first given
    floating tensor; ids spaces must be given, they have no zero)."""
    first = next(iter(given.values()))
    like = next((t for t in given.values() if t.is_floating_point()), None)
    if like is None:
        like = first.new_zeros((), dtype=torch.float64)
    lead = first.shape[: 2 if spec.over else 1]
    return {
        s.name: given[s.name] if s.name in given else like.new_zeros(*lead, *s.shape)
        for s in spec.spaces
    }


def read_steps(edge: Edge, t: int, steps: int):
    """The (space, step) nodes of space-time that the edge reads at step t."""
    delays = edge.delays or (0,) * len(edge.reads)
    for r, k, window in zip(edge.reads, delays, edge.window_of, strict=True):
        if window is None:
            if 0 <= t - k < steps:
                yield r, t - k
            continue
        kind, w = window
        first = {"causal": 0, "sliding": max(0, t - w), "full": 0}[kind]
        last = steps - 1 if kind == "full" else t
        yield from ((r, u) for u in range(first, last + 1))


def space_time_depth(spec: Spec, steps: int) -> int:
    """The longest path of the machine unrolled over ``steps`` steps: nodes (space, step),
    an edge at step t from every (space, step) it reads (delays both ways, windows) to what
    it writes at step t. The space-time hypergraph is acyclic, so relaxing every edge at
    every step settles within one pass per node."""
    depth = {(s.name, t): 0 for s in spec.spaces for t in range(steps)}
    for _ in range(len(depth) + 1):
        changed = False
        for edge in spec.edges:
            for t in range(steps):
                reached = 1 + max((depth[node] for node in read_steps(edge, t, steps)), default=0)
                for w in edge.writes:
                    if reached > depth[w, t]:
                        depth[w, t] = reached
                        changed = True
        if not changed:
            return max(depth.values())
    raise AssertionError("the space-time hypergraph has a cycle")


def sweeps(spec: Spec, steps: int | None) -> int:
    """How many sweeps of x <- f(x) + x0 reach the fixed point from x0: one more than the
    longest path of the hypergraph, depth + 1 (DESIGN.md section 4); over time, of the
    space-time hypergraph, where a path may run forward and backward in time (delayed
    reads, reads of the future, windows of steps)."""
    return spec.depth() + 1 if steps is None else space_time_depth(spec, steps) + 1


def naive_resolvent(model: nn.Module, spec: Spec, x0: dict) -> dict:
    """The definition: enough sweeps of x <- f(x) + x0, starting from x0 (see sweeps());
    with solved cycles, until it settles (see settled_resolvent())."""
    x0 = complete(spec, x0)
    if spec.solves:
        return settled_resolvent(model, spec, x0)
    x = dict(x0)
    steps = next(iter(x0.values())).shape[1] if spec.over else None
    for _ in range(sweeps(spec, steps)):
        fx = reference_f(model, spec, x)
        x = {name: fx[name] + x0[name] for name in x0}
    return x


# The naive iteration of a machine with solved cycles converges geometrically (each cycle
# halves distances): it stops SETTLED_SWEEPS sweeps after no number moved by more than
# SETTLED of the largest (or of 1), so that derivatives through it settle too.
SETTLED = 1e-13
SETTLED_SWEEPS = 5
MAX_SWEEPS = 3000


def settled_resolvent(model: nn.Module, spec: Spec, x0: dict) -> dict:
    """Sweeps of x <- f(x) + x0 from x0 (complete) until they settle, under autograd if on."""
    x = dict(x0)
    stop = None
    for sweep in range(MAX_SWEEPS):
        fx = reference_f(model, spec, x)
        new = {name: fx[name] + x0[name] for name in x0}
        change = max(float((new[name] - x[name]).detach().abs().max()) for name in x0)
        largest = max(float(new[name].detach().abs().max()) for name in x0)
        x = new
        if stop is None and change <= SETTLED * max(largest, 1.0):
            stop = sweep + SETTLED_SWEEPS
        if stop is not None and sweep >= stop:
            return x
    raise AssertionError(f"the naive iteration did not settle in {MAX_SWEEPS} sweeps")


def assert_states_close(
    actual: dict, expected: dict, what: str, rtol: float = RTOL, atol: float = ATOL
) -> None:
    assert list(actual) == list(expected), what  # every space, in declaration order
    for name, tensor in expected.items():
        torch.testing.assert_close(
            actual[name], tensor, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def assert_grads_close(
    actual, expected, names, what: str, rtol: float = RTOL, atol: float = ATOL
) -> None:
    for name, a, e in zip(names, actual, expected, strict=True):
        if a is None and e is None:
            continue
        if a is None:
            a = torch.zeros_like(e)
        if e is None:
            e = torch.zeros_like(a)
        torch.testing.assert_close(
            a, e, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{what}, gradient of {n}: {m}"
        )


def entering(spec: Spec, edge: Edge) -> tuple[int, ...]:
    """The shape the edge's first op sees: its inputs concatenated, or combined by add / mul;
    attention: the values; embedding: its ids (or positions) as one-hot vectors."""
    if edge.ops[0].kind == "attention":
        return spec.shape[edge.reads[2]]
    if edge.ops[0].kind == "embedding":
        return (edge.ctx or spec.ids[edge.reads[0]],)
    shapes = [spec.shape[r] for r in edge.reads]
    if edge.ops[0].kind in ("add", "mul"):
        return max(shapes, key=len)
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def check_op(op: Op, layer: nn.Module | None, shape: tuple, out_shape: tuple, edge: str) -> tuple:
    """Check the layer of one op against the shape it meets; returns the shape it makes."""
    d = len(shape) - 1  # spatial axes
    what = (edge, op.kind, layer)
    if op.kind == "machine":  # a nested module; the reference runs its forward
        assert isinstance(layer, nn.Module) and hasattr(layer, "resolvent"), what
        return out_shape
    if op.kind == "embedding":
        channels = op.out if op.out is not None else out_shape[0]
        assert type(layer) is nn.Embedding, what
        assert (layer.num_embeddings, layer.embedding_dim) == (shape[0], channels), what
        return (channels,)
    if op.kind == "linear" and d == 0:
        channels = op.out if op.out is not None else out_shape[0]
        if op.spectral_norm:  # PyTorch's parametrized subclass, its weight over sigma
            assert parametrize.is_parametrized(layer, "weight"), what
            (norm,) = layer.parametrizations.weight
            assert type(norm).__name__ == "_SpectralNorm", what
            assert type(layer).__bases__ == (nn.Linear,), what
        else:
            assert type(layer) is nn.Linear, what
        assert (layer.in_features, layer.out_features) == (shape[0], channels), what
        assert (layer.bias is not None) == op.bias, what
        return (channels,)
    if op.kind in ("linear", "conv"):  # linear on a signal or an image: a 1×1 convolution
        channels = op.out if op.out is not None else out_shape[0]
        k, stride = op.kernel, op.stride
        padding = k // 2 if op.padding == "same" else op.padding
        assert type(layer) is getattr(nn, f"Conv{d}d"), what
        assert (layer.in_channels, layer.out_channels) == (shape[0], channels), what
        assert layer.kernel_size == (k,) * d and layer.stride == (stride,) * d, what
        assert layer.padding in ((padding,) * d, op.padding), what
        assert layer.dilation == (1,) * d and layer.groups == 1, what
        assert (layer.bias is not None) == op.bias, what
        return (channels, *((n + 2 * padding - k) // stride + 1 for n in shape[1:]))
    if op.kind == "layernorm":
        assert type(layer) is nn.LayerNorm, what
        assert tuple(layer.normalized_shape) == shape, what
        assert layer.eps == op.eps and layer.elementwise_affine == op.affine, what
    elif op.kind == "groupnorm":
        assert type(layer) is nn.GroupNorm, what
        assert (layer.num_groups, layer.num_channels) == (op.groups, shape[0]), what
        assert layer.eps == op.eps and layer.affine, what
    elif op.kind == "batchnorm":
        assert type(layer) is getattr(nn, f"BatchNorm{max(d, 1)}d"), what
        assert layer.num_features == shape[0] and layer.eps == op.eps and layer.affine, what
    elif op.kind in ("maxpool", "avgpool"):
        return (shape[0], *(n // op.kernel for n in shape[1:]))
    elif op.kind == "upsample":
        return (shape[0], *(2 * n for n in shape[1:]))
    elif op.kind == "global_avg_pool":
        return shape[:1]
    elif op.kind == "flatten":
        return (math.prod(shape),)
    elif op.kind == "reshape":
        return op.shape
    return shape


def check_layers(model: nn.Module, spec: Spec) -> None:
    """One attribute per edge with layers; its layers are built for the shapes they meet;
    an nn.Dropout of its own per dropout op (edge_dropout; a shared edge uses the
    original's); one runtime.Solve per solved cycle, with the solver and arguments the
    source gives."""
    shapes = spec.shape
    with_layers = {
        e.layer_attr.split(".")[0] for e in spec.edges if any(op.has_layer for op in e.ops)
    }
    children = dict(model.named_children())
    # (a loop kept as a loop holds its edges' dropout in one ModuleDict, block_dropout)
    dropouts = {
        name: [m] if type(m) is nn.Dropout else list(m.values())
        for name, m in children.items()
        if type(m) is nn.Dropout
        or (isinstance(m, nn.ModuleDict) and all(type(d) is nn.Dropout for d in m.values()))
    }
    assert all(name.endswith("_dropout") for name in dropouts), sorted(dropouts)
    ps = [op.arg for e in spec.edges if not e.text for op in e.ops if op.kind == "dropout"]
    assert sorted(d.p for ms in dropouts.values() for d in ms) == sorted(ps)
    solvers = {name for name, m in children.items() if isinstance(m, runtime.Solve)}
    assert set(children) - set(dropouts) - solvers == with_layers
    check_solvers(model, spec)
    for edge in spec.edges:
        if not any(op.has_layer for op in edge.ops):
            assert not isinstance(getattr(model, edge.layer_attr, None), nn.Module), edge.name
            continue
        layers = iter(edge_layers(model, edge))
        shape = entering(spec, edge)
        first = shapes[edge.writes[0]]
        out_shape = (sum(shapes[w][0] for w in edge.writes), *first[1:])
        for op in edge.ops:
            layer = next(layers) if op.has_layer else None
            shape = check_op(op, layer, shape, out_shape, edge.name)
        assert shape == out_shape, edge.name


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Weights far from the initialisation (norm scales and shifts, running statistics too)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=b.dtype))


def check_against_definition(
    cls,
    spec: Spec,
    seed: int,
    batch: int,
    given: list[str],
    steps: int | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
    sizes: dict[str, int] | None = None,
) -> nn.Module:
    """Every property of the machine equation, for one machine and one x0 support; over
    time on space-time states of ``steps`` steps. Returns the (randomized) model.

    ``prepare(model)`` runs after the weights are drawn (the cycles of machines used as
    edges made to contract). A model with solved cycles anywhere, its own or its edges',
    is compared at the tolerances of its solvers. ``sizes``: the sizes of the symbols of a
    machine with sizes known at call time, for which ``spec`` has the shapes (its
    ``SPACES`` then hold text, the support must bind every symbol)."""
    if sizes is None:
        assert list(cls.SPACES.items()) == [(s.name, s.shape) for s in spec.spaces]
    else:
        assert list(cls.SPACES) == [s.name for s in spec.spaces]
        for s in spec.spaces:
            assert size_values(cls.SPACES[s.name], sizes) == s.shape, (s.name, sizes)
    assert tuple(cls.INPUTS) == spec.inputs
    assert tuple(cls.OUTPUTS) == spec.outputs
    assert (steps is not None) == bool(spec.over)
    gen = torch.Generator().manual_seed(seed)
    model = cls().double().eval()
    if sizes is not None:
        assert model.shapes(**sizes) == spec.shape
    check_layers(model, spec)
    randomize(model, gen)
    if spec.solves:
        contract(model, spec)
    if prepare is not None:
        prepare(model)
    solved = any(isinstance(m, runtime.Solve) for m in model.modules())
    names = [s.name for s in spec.spaces]
    ids = spec.ids
    assert dict(getattr(cls, "IDS", {})) == ids
    assert not set(ids) - set(given), "ids have no zero: x0 must give them"
    lead = (batch,) if steps is None else (batch, steps)
    rtol = RTOL if steps is None else RTOL_TIME
    rtol, atol = (RTOL_CYCLE, ATOL_CYCLE) if solved else (rtol, ATOL)

    def rand(name: str) -> torch.Tensor:
        if name in ids:
            return torch.randint(0, ids[name], lead, generator=gen)
        return torch.randn(*lead, *spec.shape[name], generator=gen, dtype=torch.float64)

    # f is the sum of the edges: on a complete state, and on a partial one (missing: zero).
    state = {name: rand(name) for name in names}
    assert_states_close(model.f(state), reference_f(model, spec, state), "f(state)", rtol=rtol)
    partial = {name: state[name] for name in given}
    expected = reference_f(model, spec, complete(spec, partial))
    assert_states_close(model.f(partial), expected, "f(partial state)", rtol=rtol)

    # The resolvent is the definition, and solves the machine equation.
    x0 = {name: rand(name) for name in given}
    x = model.resolvent(x0)
    assert_states_close(x, naive_resolvent(model, spec, x0), "resolvent(x0)", rtol=rtol, atol=atol)
    full = complete(spec, x0)
    fx = model.f(x)
    fixed_point = {name: fx[name] + full[name] for name in names}
    assert_states_close(x, fixed_point, "resolvent(x0) vs f(x) + x0", rtol=rtol, atol=atol)

    # forward is the resolvent of x0 on the inputs, read on the outputs.
    inputs = [rand(name) for name in spec.inputs]
    result = model(*inputs)
    if len(spec.outputs) == 1:
        assert isinstance(result, torch.Tensor)
        outputs = (result,)
    else:
        assert isinstance(result, tuple) and len(result) == len(spec.outputs)
        outputs = tuple(result)
    expected = naive_resolvent(model, spec, dict(zip(spec.inputs, inputs, strict=True)))
    assert_states_close(
        dict(zip(spec.outputs, outputs, strict=True)),
        {name: expected[name] for name in spec.outputs},
        "forward(*inputs)",
        rtol=rtol,
        atol=atol,
    )
    resolved = model.resolvent(dict(zip(spec.inputs, inputs, strict=True)))
    assert_states_close(
        dict(zip(spec.outputs, outputs, strict=True)),
        {name: resolved[name] for name in spec.outputs},
        "forward(*inputs) vs resolvent on the inputs",
        rtol=rtol,
        atol=atol,
    )

    # Gradients: through resolvent and forward, as autograd through the naive iteration.
    params = dict(model.named_parameters())
    names = [name for name in names if name not in ids]  # ids: integers, no gradient
    weights = {name: rand(name) for name in names}

    def loss(state: dict, spaces) -> torch.Tensor:
        return sum((weights[name] * state[name]).sum() for name in spaces)

    def grad(scalar: torch.Tensor, wrt: list) -> tuple:
        if not scalar.requires_grad:  # outputs that depend on nothing (a zero past, say)
            return (None,) * len(wrt)
        return torch.autograd.grad(scalar, wrt, allow_unused=True)

    leaves = {name: t if name in ids else t.clone().requires_grad_() for name, t in x0.items()}
    floating = [t for name, t in leaves.items() if name not in ids]
    wrt = [*params.values(), *floating]
    labels = [*params, *(f"x0[{name}]" for name in leaves if name not in ids)]
    got = grad(loss(model.resolvent(leaves), names), wrt)
    want = grad(loss(naive_resolvent(model, spec, leaves), names), wrt)
    assert_grads_close(got, want, labels, "resolvent", rtol=rtol, atol=atol)

    ins = [
        t if name in ids else t.clone().requires_grad_()
        for name, t in zip(spec.inputs, inputs, strict=True)
    ]
    wrt = [
        *params.values(),
        *(t for name, t in zip(spec.inputs, ins, strict=True) if name not in ids),
    ]
    labels = [*params, *(name for name in spec.inputs if name not in ids)]
    got = grad(loss(as_outputs(spec, model(*ins)), spec.outputs), wrt)
    naive = naive_resolvent(model, spec, dict(zip(spec.inputs, ins, strict=True)))
    want = grad(loss(naive, spec.outputs), wrt)
    assert_grads_close(got, want, labels, "forward", rtol=rtol, atol=atol)
    if spec.over:
        check_time(model, spec, inputs, random.Random(seed))
    else:
        everywhere = {name: rand(name) for name in names}
        ybar = {name: rand(name) for name in names}
        check_adjoint(model, spec, everywhere, ybar, rtol, atol)
    return model


def check_adjoint(
    model: nn.Module, spec: Spec, x0: dict, ybar: dict, rtol: float, atol: float
) -> None:
    """adjoint(x, ybar) at x = resolvent(x0), x0 and ybar on every space, is the cotangent of
    x0 under <resolvent(x0), ybar>: autograd through the naive iteration, and through
    resolvent (its implicit backward, where cycles are solved)."""
    leaves = {name: t.clone().requires_grad_() for name, t in x0.items()}

    def cotangents(resolvent) -> dict:
        state = resolvent(leaves)
        pairing = sum((state[name] * ybar[name]).sum() for name in x0)
        return dict(zip(x0, torch.autograd.grad(pairing, list(leaves.values())), strict=True))

    want = cotangents(lambda given: naive_resolvent(model, spec, given))
    bar = model.adjoint(model.resolvent(x0), ybar)
    assert_states_close(bar, want, "adjoint(resolvent(x0), ybar)", rtol=rtol, atol=atol)
    got = cotangents(model.resolvent)
    assert_states_close(got, want, "autograd of resolvent, x0 on every space", rtol, atol)


def as_outputs(spec: Spec, result) -> dict:
    """forward's result as {output: tensor}: one tensor, or a tuple of them."""
    if len(spec.outputs) == 1:
        assert isinstance(result, torch.Tensor)
        result = (result,)
    assert isinstance(result, tuple) and len(result) == len(spec.outputs)
    return dict(zip(spec.outputs, result, strict=True))


def expected_windows(spec: Spec, delays: dict[str, int]) -> dict[str, int | None]:
    """WINDOWS: every space read through a causal or sliding window, and how many of its
    last steps the state keeps for later chunks (None: all of them, for k[0..t]; else the
    largest w of its k[t-w..t], or k of its h[t-k] if that is more: the history of a space
    read at a delay too holds its past)."""
    windows: dict[str, int | None] = {}
    for edge in spec.edges:
        for name, window in zip(edge.reads, edge.window_of, strict=True):
            if window is None or window[0] == "full":
                continue
            if window[0] == "causal" or windows.get(name, 0) is None:
                windows[name] = None
            else:
                windows[name] = max(windows.get(name, 0), window[1], delays.get(name, 0))
    return windows


def check_time(model: nn.Module, spec: Spec, inputs: list, rng: random.Random) -> None:
    """forward over time: DELAYS, WINDOWS and CAUSAL; for a causal machine the state it
    returns (the last k steps of a space read k steps ago, the keys and values a window
    reads again, the step count of positions) and chunks with state=, for any other a
    ValueError on state=; longer and shorter runs; lengths=."""
    delays: dict[str, int] = {}
    for edge in spec.edges:
        for r, k in edge.inputs:
            if k > 0:
                delays[r] = max(delays.get(r, 0), k)
    windows = expected_windows(spec, delays)
    assert dict(model.DELAYS) == delays
    assert dict(getattr(model, "WINDOWS", {})) == windows
    assert model.CAUSAL == spec.causal
    clock = [spec.over] if any(e.ctx for e in spec.edges) else []
    batch, steps = inputs[0].shape[:2]
    rtol = RTOL_TIME
    expected = naive_resolvent(model, spec, dict(zip(spec.inputs, inputs, strict=True)))
    if not spec.causal:
        for kwargs in ({"return_state": True}, {"state": {}}):
            with pytest.raises(ValueError, match="cannot run in chunks"):
                model(*inputs, **kwargs)
        whole = as_outputs(spec, model(*inputs))
    else:
        whole, state = model(*inputs, return_state=True)
        whole = as_outputs(spec, whole)
        assert sorted(state) == sorted({*delays, *windows, *clock})
    assert_states_close(
        whole, {name: expected[name] for name in spec.outputs}, "forward", rtol=rtol
    )
    if spec.causal:
        # The state: the last k steps of every space read k steps ago (zero before step 0),
        # the keys and values windows read again (and the past of a space also read at a
        # delay), the steps run so far.
        if set(delays) & set(windows):
            event("a space read at a delay and through a window")
        for name, k in delays.items():
            if name in windows:
                continue
            padded = torch.cat(
                [expected[name].new_zeros(batch, k, *spec.shape[name]), expected[name]], 1
            )
            torch.testing.assert_close(
                state[name], padded[:, -k:], rtol=rtol, atol=ATOL, msg=f"state[{name!r}]"
            )
        for name, w in windows.items():
            kept = expected[name] if w is None else expected[name][:, -w:]
            torch.testing.assert_close(
                state[name], kept, rtol=rtol, atol=ATOL, msg=f"state[{name!r}] (history)"
            )
        for name in clock:
            assert int(state[name]) == steps
        # Chunks with state= are one long call.
        cuts = sorted(rng.sample(range(1, steps), rng.randint(1, steps - 1)))
        pieces: list[dict] = []
        carried = None
        for start, stop in zip([0, *cuts], [*cuts, steps], strict=True):
            result, carried = model(
                *(x[:, start:stop] for x in inputs), state=carried, return_state=True
            )
            pieces.append(as_outputs(spec, result))
        chunked = {name: torch.cat([p[name] for p in pieces], 1) for name in spec.outputs}
        assert_states_close(chunked, whole, f"forward in chunks {cuts}", rtol=rtol)
        assert sorted(carried) == sorted(state)
        for name in state:
            torch.testing.assert_close(carried[name], state[name], rtol=rtol, atol=ATOL)
    # steps= past the inputs runs on with zero input (ids: id 0); fewer steps cut them.
    more = steps + rng.randint(1, 3)
    padded_inputs = [
        torch.cat([x, x.new_zeros(batch, more - steps, *x.shape[2:])], 1) for x in inputs
    ]
    longer = naive_resolvent(model, spec, dict(zip(spec.inputs, padded_inputs, strict=True)))
    assert_states_close(
        as_outputs(spec, model(*inputs, steps=more)),
        {name: longer[name] for name in spec.outputs},
        f"forward(steps={more})",
        rtol=rtol,
    )
    fewer = rng.randint(1, steps)
    if spec.causal:
        shorter = {name: whole[name][:, :fewer] for name in spec.outputs}
    else:  # the future is cut too
        cut = {name: x[:, :fewer] for name, x in zip(spec.inputs, inputs, strict=True)}
        naive = naive_resolvent(model, spec, cut)
        shorter = {name: naive[name] for name in spec.outputs}
    assert_states_close(
        as_outputs(spec, model(*inputs, steps=fewer)), shorter, f"forward(steps={fewer})", rtol=rtol
    )
    check_lengths(model, spec, inputs, rng, delays, windows, clock)


def check_lengths(
    model: nn.Module, spec: Spec, inputs: list, rng: random.Random, delays, windows, clock
) -> None:
    """forward(..., lengths=): the steps past each sequence's length are padding (here
    random values, not zeros). Each sequence's valid outputs are the definition on that
    sequence alone, its padded outputs are zero, and its padding gets zero gradient; the
    state of a causal machine is the one at each sequence's own end (or, with windows and
    positions, whose history is one for the batch, a ValueError)."""
    batch, steps = inputs[0].shape[:2]
    lengths = torch.tensor([rng.randint(1, steps) for _ in range(batch)])
    lengths[rng.randrange(batch)] = steps  # one sequence fills the batch's steps
    ids = spec.ids
    ins = [
        x if name in ids else x.clone().requires_grad_()
        for name, x in zip(spec.inputs, inputs, strict=True)
    ]
    outputs = as_outputs(spec, model(*ins, lengths=lengths))
    alone = []
    for b, length in enumerate(lengths.tolist()):
        cut = {name: x[b : b + 1, :length] for name, x in zip(spec.inputs, inputs, strict=True)}
        alone.append(naive_resolvent(model, spec, cut))
        for name in spec.outputs:
            torch.testing.assert_close(
                outputs[name][b : b + 1, :length],
                alone[b][name],
                rtol=RTOL_TIME,
                atol=ATOL,
                msg=lambda m, n=name, b=b: f"forward(lengths={lengths.tolist()}) {n}[{b}]: {m}",
            )
            assert not outputs[name][b, length:].any(), f"{name}[{b}] past its length"
    floating = [(name, x) for name, x in zip(spec.inputs, ins, strict=True) if name not in ids]
    scalar = sum(o.sum() for o in outputs.values())
    if floating and scalar.requires_grad:
        grads = torch.autograd.grad(scalar, [x for _, x in floating], allow_unused=True)
        for (name, _), g in zip(floating, grads, strict=True):
            for b, length in enumerate(lengths.tolist()):
                if g is not None:
                    assert not g[b, length:].any(), f"gradient of padded {name}[{b}]"
                    assert torch.isfinite(g).all(), f"gradient of {name}"
    if not spec.causal:
        return
    if windows or clock:
        with pytest.raises(ValueError, match="lengths= cannot be combined"):
            model(*inputs, lengths=lengths, return_state=True)
        return
    _, state = model(*inputs, lengths=lengths, return_state=True)
    for name, k in delays.items():
        if name in windows:
            continue
        for b in range(batch):
            own = alone[b][name]
            padded = torch.cat([own.new_zeros(1, k, *spec.shape[name]), own], 1)
            torch.testing.assert_close(
                state[name][b : b + 1],
                padded[:, -k:],
                rtol=RTOL_TIME,
                atol=ATOL,
                msg=lambda m, n=name, b=b: f"state[{n!r}][{b}] with lengths: {m}",
            )


def load_classes(source: str, filename: str) -> dict:
    with warnings.catch_warnings():  # random machines often have spaces that reach no output
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, filename)
    namespace: dict = {"__name__": "machc_differential_generated"}
    exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - code we just generated
    return namespace


# --- random machines -------------------------------------------------------------------

# Names chosen to collide with what generated code uses: method locals (x0, state,
# self), module names (torch, F, nn, Tensor, NamedTuple), the class and its output
# tuple (M, MOutput), temporaries (y_e1 for y written by e1), sanitized arrays (blk_1),
# NamedTuple fields that need renaming (count, index).
SHARED_NAMES = (
    *("x", "y", "h", "u", "z", "a", "b", "x0", "state", "self", "torch", "F", "nn"),
    *("Tensor", "NamedTuple", "annotations", "count", "index", "M", "MOutput", "y_e1"),
    *("h_e2", "enc", "mix", "proj"),
    *(f"e{i}" for i in range(1, 13)),
)
# Fine as space names; as edge names they would become renamed layer attributes.
SPACE_ONLY_NAMES = ("lambda", "None", "_complete", "_v", "blk_1")
FAMILY = "blk"  # an array of spaces: blk[1], blk[2], ...
# Names that the generated code of machines over time uses: the time loop's locals, the
# per-step lists and pasts of a space h, the runtime helpers' module, the time variable.
TIME_NAMES = ("batch", "steps", "t", "tau", "h_steps", "h_past", "x_at", "runtime", "carry")


def pipelines(n_in: int, n_out: int, k: int) -> list[tuple[Op, ...]]:
    """Pipelines mapping n_in features to n_out; k is an inner size."""

    def lin(out=None, bias=True):
        args = ([f"out={out}"] if out is not None else []) + ([] if bias else ["bias=false"])
        text = f"linear({', '.join(args)})" if args else "linear"
        return Op("linear", text, out=out, bias=bias)

    def act(kind, text=None, arg=None):
        return Op(kind, text or kind, arg=arg)

    def ln(text="layernorm", eps=1e-5, affine=True):
        return Op("layernorm", text, eps=eps, affine=affine)

    choices = [
        (lin(),),
        (lin(), act("tanh")),
        (lin(out=k), act("relu"), lin()),
        (lin(), ln()),
        (lin(bias=False), act("sigmoid")),
        (act("leaky_relu", "leaky_relu(0.2)", 0.2), lin()),
        (lin(), act("softmax")),
        (
            act("gelu"),
            lin(out=k, bias=False),
            ln("layernorm(affine=false)", affine=False),
            act("silu"),
            lin(),
        ),
        (ln("layernorm(eps=0.001)", eps=0.001), lin(), act("elu", "elu(alpha=0.5)", 0.5)),
        (act("softplus"), Op("dropout", "dropout(0.3)", arg=0.3), lin()),
        (
            lin(out=k),
            ln(),
            act("gelu"),
            Op("dropout", "dropout(p=0.1)", arg=0.1),
            lin(),
            act("leaky_relu", "leaky_relu(slope=-0.5)", -0.5),
        ),
    ]
    if n_in == n_out:
        choices += [
            (Op("identity", "identity"),),
            (act("tanh"),),
            (act("relu"), Op("identity", "identity")),
            (ln(), act("elu")),
        ]
    # A layernorm of one feature has zero gradient, which autograd computes as rounding
    # noise times 1/sqrt(eps), beyond the tolerances: none here.
    return [c for c in choices if not normalises_one_feature(c, n_in, n_out)]


def normalises_one_feature(ops: tuple[Op, ...], n_in: int, n_out: int) -> bool:
    """Whether a layernorm of a vector pipeline meets a single feature."""
    width = n_in
    for op in ops:
        if op.kind == "layernorm" and width == 1:
            return True
        if op.kind == "linear":
            width = n_out if op.out is None else op.out
    return False


@st.composite
def random_machines(draw, machine: str = "M", over: str = "", most: int = 8, largest: int = 6):
    """Random acyclic vector machines of 2..most spaces of sizes 1..largest. Over time
    (``over`` names the time variable), edges also read spaces k = 1..3 steps ago (any
    space: inputs, the edge's own target, later ones; one space at several delays; an
    array at one delay), and some are gates: ``mul`` of equal-size inputs, as in an LSTM.
    The zero-delay reads alone form a DAG, as within one step they must."""
    n = draw(st.integers(2, most))
    pool = SHARED_NAMES + SPACE_ONLY_NAMES
    if over:
        pool += tuple(name for name in TIME_NAMES if name != over)
    names = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique=True))
    # `names` is the topological order: an edge reads spaces earlier in it and writes
    # spaces later in it. The first space is an input (nothing can write it); a later
    # input may be written by edges too (its value is x0 plus their contributions).
    sizes = draw(st.lists(st.integers(1, largest), min_size=n, max_size=n))
    role = st.integers(0, 9).map(lambda k: "input" if k < 3 else "space" if k < 8 else "output")
    roles = ["input"] + draw(st.lists(role, min_size=n - 1, max_size=n - 1))
    roles[draw(st.integers(1, n - 1))] = "output"
    declared = draw(st.permutations(range(n)))  # declaration order, unrelated to the topology

    # Maybe an array: a run of hidden spaces declared one after another becomes blk[1..m].
    declarations: list[str] = []
    families: dict[int, int] = {}  # declaration index -> run length
    family: list[int] = []  # the positions of blk[1], blk[2], ...
    if draw(st.integers(0, 2)) > 0:
        runs = [
            i
            for i in range(n - 1)
            if roles[declared[i]] == "space" and roles[declared[i + 1]] == "space"
        ]
        if runs:
            start = draw(st.sampled_from(runs))
            length = 2
            if start + 2 < n and roles[declared[start + 2]] == "space" and draw(st.booleans()):
                length = 3
            families[start] = length
            for j in range(length):
                position = declared[start + j]
                names[position] = f"{FAMILY}[{j + 1}]"
                sizes[position] = sizes[declared[start]]
                family.append(position)
            event("array of spaces")
    i = 0
    while i < n:
        position = declared[i]
        if i in families:
            decl = f"{roles[position]:<6} {FAMILY}[1..{families[i]}] : {sizes[position]}"
            i += families[i]
        else:
            decl = f"{roles[position]:<6} {names[position]} : {sizes[position]}"
            i += 1
        declarations.append(decl)

    # Edges: one for every space that must be written, then some more into any space.
    must = [j for j in range(1, n) if roles[j] != "input"]
    more = draw(st.lists(st.integers(1, n - 1), max_size=4))
    edge_names = [name for name in draw(st.permutations(SHARED_NAMES)) if name not in names][
        : len(must) + len(more)
    ]
    edges = []
    writers = {j: 0 for j in range(n)}
    for name, target in zip(edge_names, must + more, strict=True):
        if over and draw(st.integers(0, 3)) == 0:  # a gate: mul of equal-size inputs
            size = sizes[target]
            now = [j for j in range(target) if sizes[j] == size]
            reads = draw(st.lists(st.sampled_from(now), max_size=2)) if now else []
            past = st.tuples(st.sampled_from([j for j in range(n) if sizes[j] == size]), LAGS)
            delayed = draw(st.lists(past, min_size=max(0, 2 - len(reads)), max_size=2))
            inputs = draw(st.permutations([(j, 0) for j in reads] + delayed))
            gate = (Op("mul", "mul"),)
            ops = gate + draw(st.sampled_from([(), (Op("tanh", "tanh"),), (Op("relu", "relu"),)]))
            writes = [target]
            event("a gate (mul)")
        else:
            reads = draw(st.lists(st.integers(0, target - 1), min_size=1, max_size=3, unique=True))
            if target - 1 not in reads and draw(st.booleans()):  # chains make deep machines
                reads.insert(draw(st.integers(0, len(reads))), target - 1)
            if draw(st.integers(0, 11)) == 11:  # now and then a space read twice
                reads.insert(draw(st.integers(0, len(reads))), draw(st.sampled_from(reads)))
                event("a space read twice")
            inputs = [(j, 0) for j in reads]
            if over:
                inputs = draw(delayed_reads(n, target, inputs, family))
                reads = [j for j, k in inputs if k == 0]
            later = [j for j in range(max(reads, default=-1) + 1, n) if j != target]
            writes = [target]
            if later:
                writes += draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
            writes = draw(st.permutations(writes))
            n_in = sum(sizes[j] for j, _ in inputs)
            n_out = sum(sizes[j] for j in writes)
            choices = pipelines(n_in, n_out, draw(st.integers(2 if over else 1, 6)))
            if over and min(n_in, n_out) == 1:
                # A layernorm of one feature has zero gradient, which autograd computes as
                # rounding noise times 1/sqrt(eps): over many steps, beyond the tolerances.
                choices = [c for c in choices if all(op.kind != "layernorm" for op in c)]
            ops = draw(st.sampled_from(choices))
        for j in writes:
            writers[j] += 1
        edges.append(
            Edge(
                name=name,
                reads=tuple(names[j] for j, _ in inputs),
                writes=tuple(names[j] for j in writes),
                ops=ops,
                product=draw(st.sampled_from(["×", "*"])),
                arrow=draw(st.sampled_from(["->", "->", "→"])),
                delays=tuple(k for _, k in inputs) if over else (),
                ranges=bool(over) and draw(st.booleans()),
                guard=() if over else draw(guards()),
            )
        )
    edges = draw(st.permutations(edges))  # declaration order, unrelated to the topology
    if any(count > 1 for count in writers.values()):
        event("several edges write one space")
    if any(writers[j] and roles[j] == "input" for j in range(n)):
        event("an edge writes an input")
    if any(len(e.writes) > 1 for e in edges):
        event("an edge writes several spaces")
    if any(len(e.reads) > 1 for e in edges):
        event("an edge reads several spaces")
    if any(sum(op.has_layer for op in e.ops) > 1 for e in edges):
        event("a ModuleList")
    if over:
        recurrent = {e.reads[i] for e in edges for i, k in enumerate(e.delays) if k}
        event(f"{min(len(recurrent), 3)}+ spaces read at earlier steps")
        if recurrent & {names[j] for j in range(n) if roles[j] == "input"}:
            event("an input read at an earlier step")
    spaces = tuple(Space(names[p], sizes[p], roles[p]) for p in declared)
    return Spec(
        name=machine,
        spaces=spaces,
        edges=tuple(edges),
        declarations=tuple(declarations),
        over=over,
    )


LAGS = st.integers(1, 3)  # how many steps ago a delayed read looks


@st.composite
def delayed_reads(draw, n: int, target: int, inputs: list, family: list[int]) -> list:
    """An edge's (space, delay) reads over time: its zero-delay reads, shuffled with
    reads of any space at earlier steps; sometimes only the past."""
    delayed = draw(st.lists(st.tuples(st.integers(0, n - 1), LAGS), max_size=2))
    if draw(st.booleans()):  # the target's own past: a recurrence
        delayed.append((target, draw(LAGS)))
    if draw(st.integers(0, 3)) == 0:  # one space at several delays: h[t-1] × h[t-3]
        j = draw(st.integers(0, n - 1))
        lags = draw(st.lists(LAGS, min_size=2, max_size=3, unique=True))
        delayed += [(j, k) for k in draw(st.permutations(lags))]
        event("a space read at several delays")
    if delayed and draw(st.integers(0, 3)) == 0:
        inputs = []  # only the past
        event("an edge reads only the past")
    inputs = draw(st.permutations(inputs + delayed))
    if family and draw(st.integers(0, 2)) == 0:  # blk[1..m][t-k]
        at = draw(st.integers(0, len(inputs)))
        k = draw(LAGS)
        inputs = inputs[:at] + [(j, k) for j in family] + inputs[at:]
        event("an array read at one delay")
    return inputs


@st.composite
def cases(draw, machines=random_machines):
    """Machines of one source (now and then a second one, named like the first one's
    output tuple), the spaces x0 is given on for each, a seed and a batch size."""
    specs = [draw(machines())]
    if draw(st.integers(0, 3)) == 3:
        specs.append(draw(machines(draw(st.sampled_from(["N", "MOutput"])))))
        event("two machines in one source")
    supports = []
    for spec in specs:
        names = [s.name for s in spec.spaces]
        supports.append(
            draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        )
    seed = draw(st.integers(0, 2**32 - 1))
    batch = draw(st.integers(1, 3))
    return specs, supports, seed, batch


@settings(
    max_examples=100,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_random_machines_follow_the_machine_equation(case) -> None:
    check_case(case)


@st.composite
def time_cases(draw):
    """A machine over time, the spaces x0 is given on, a seed, batch 2 and 2..5 steps."""
    over = draw(st.sampled_from(["t", "tau", "step"]))
    spec = draw(random_machines(over=over, most=6, largest=4))
    names = [s.name for s in spec.spaces]
    support = draw(
        st.one_of(
            st.just(list(spec.inputs)),
            st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True),
        )
    )
    return spec, support, draw(st.integers(0, 2**32 - 1)), draw(st.integers(2, 5))


@settings(
    max_examples=25,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=time_cases())
def test_random_machines_over_time_follow_the_machine_equation(case) -> None:
    """Space-time states: delayed reads are shifts along the time axis (zero before step
    0); resolvent, f, the machine equation, forward, chunks with state and gradients."""
    spec, support, seed, steps = case
    source = spec.render()
    note(source)
    note(f"x0 given on {support}, seed {seed}, {steps} steps")
    event(f"depth {spec.depth()} within a step")
    cls = load_classes(source, "random_time.mach")[spec.name]
    check_against_definition(cls, spec, seed, 2, support, steps)


def check_case(case) -> None:
    """Compile the drawn machines as one source and check each against the definition."""
    specs, supports, seed, batch = case
    source = "\n".join(spec.render() for spec in specs)
    note(source)
    note(f"x0 given on {supports}, seed {seed}, batch {batch}")
    event(f"depth {specs[0].depth()}")
    namespace = load_classes(source, "random.mach")
    for spec, support in zip(specs, supports, strict=True):
        check_against_definition(namespace[spec.name], spec, seed, batch, support)


def test_the_strategy_renders_what_it_draws() -> None:
    """A fixed machine through the renderer: the spec is what the compiler reads."""
    x = Space("x", 2, "input")
    h = Space("h", 3, "space")
    y = Space("y", 2, "output")
    edges = (
        Edge("e1", ("x", "x"), ("h", "y"), pipelines(4, 5, 2)[2], product="*", arrow="→"),
        Edge("e2", ("h",), ("y",), pipelines(3, 2, 1)[0]),
    )
    decls = ("input  x : 2", "space  h : 3", "output y : 2")
    spec = Spec("M", (x, h, y), edges, decls)
    assert spec.render().splitlines()[1:] == [
        "machine M {",
        "    input  x : 2",
        "    space  h : 3",
        "    output y : 2",
        "    e1 : x * x → h * y = linear(out=2) | relu | linear",
        "    e2 : h -> y = linear",
        "}",
    ]
    assert spec.depth() == 2
    check_against_definition(load_classes(spec.render(), "fixed.mach")["M"], spec, 0, 2, ["x"])


# --- sequence machines: the future, attention, ids and positions ------------------------

# A sequence machine is drawn as groups of spaces, consecutive in the topological order;
# each group runs every step at once ("all", where attention edges live), or is a
# recurrence group whose edges may read its spaces at earlier steps ("forward") or later
# ones ("backward"). Reads along the order or from earlier groups may look any way in time.
GROUP_KINDS = ("forward", "all", "backward")
CTX = st.integers(8, 10)  # positions: at least the steps of any run here (5 + 3 more)


def sequence_delays(i: int, j: int, group: list[int], kinds: list[str]) -> list[int]:
    """The delays (0: now, k > 0: h[t-k], k < 0: h[t+|k|]) at which an edge writing space j
    may read space i, so that the space-time graph has no cycle through both earlier and
    later steps (E013) and none within a step: arcs run along the order within a group and
    from earlier groups to later ones, except a recurrence group's reads of its own spaces
    in its direction of time."""
    lags = [1, 2, 3]
    if group[i] < group[j]:
        return [0, *lags, *(-k for k in lags)]
    if group[i] > group[j]:
        return []
    along = [0] if i < j else []
    kind = kinds[group[j]]
    if kind == "forward":
        return along + lags
    if kind == "backward":
        return along + [-k for k in lags]
    return [0, *lags, *(-k for k in lags)] if i < j else []


def space_time_graph(spec: Spec):
    """Spaces and edges as nodes; an arc for every read (at any step) and every write."""
    graph = nx.DiGraph()
    for edge in spec.edges:
        graph.add_node(("edge", edge.name))
        for r in edge.reads:
            graph.add_edge(("space", r), ("edge", edge.name))
        for w in edge.writes:
            graph.add_edge(("edge", edge.name), ("space", w))
    return graph


def recurrences(spec: Spec) -> list[tuple[str, set[str], set[str]]]:
    """The loops of the machine: its strongly connected parts, each "forward" or
    "backward", with its edges and its spaces."""
    loops = []
    for part in nx.strongly_connected_components(space_time_graph(spec)):
        if len(part) < 2:
            continue
        edges = {name for kind, name in part if kind == "edge"}
        spaces = {name for kind, name in part if kind == "space"}
        lags = [k for e in spec.edges if e.name in edges for r, k in e.inputs if r in spaces and k]
        loops.append(("forward" if all(k > 0 for k in lags) else "backward", edges, spaces))
    return loops


@st.composite
def attention_edge(
    draw,
    j: int,
    sizes: list[int],
    writes: list[int],
    names: list[str],
    causal: bool,
):
    """q × k[window] × v[window] -> writes = attention(heads) | ops, reading spaces before j
    (the same space may be queries, keys and values). Causal: no window k[..]."""
    heads = draw(st.sampled_from([1, 2]))
    if not any(sizes[i] % heads == 0 for i in range(j)):
        heads = 1
    keys = [i for i in range(j) if sizes[i] % heads == 0]
    k = draw(st.sampled_from(keys))
    q = draw(st.sampled_from([i for i in range(j) if sizes[i] == sizes[k]]))
    v = draw(st.sampled_from(keys))
    windows = [("sliding", draw(st.integers(1, 3))), ("causal", 0), ("full", 0)]
    window = draw(st.sampled_from(windows[:2] if causal else windows))
    text = draw(
        st.sampled_from(
            [f"attention(heads={heads})", f"attention({heads})", f"attention({heads}, dropout=0.1)"]
        )
    )
    n_out = sum(sizes[w] for w in writes)
    after = pipelines(sizes[v], n_out, draw(st.integers(2, 4)))
    if sizes[v] == n_out:
        after += [(), (Op("identity", "identity"),)]
    if min(sizes[v], n_out) == 1:
        after = [c for c in after if all(op.kind != "layernorm" for op in c)]
    ops = (Op("attention", text, heads=heads), *draw(st.sampled_from(after)))
    event(f"attention, {window[0]} window")
    return tuple(names[i] for i in (q, k, v)), ops, (None, window, window)


def embedding_ops(draw, count_text: str, n_out: int) -> tuple[Op, ...]:
    """embedding, maybe with an activation or a small MLP after it; count_text: its
    number of positions ("9", "num=9") or "" for ids (inferred)."""
    m = draw(st.integers(2, 4))
    plain = f"embedding({count_text})" if count_text else "embedding"
    inner = f"embedding({count_text + ', ' if count_text else ''}out={m})"
    return draw(
        st.sampled_from(
            [
                (Op("embedding", plain),),
                (Op("embedding", plain), Op("tanh", "tanh")),
                (Op("embedding", inner, out=m), Op("relu", "relu"), linear()),
            ]
        )
    )


@st.composite
def sequence_machines(draw, machine: str = "M", over: str = "t", most: int = 7) -> Spec:
    """Random sequence machines: groups of spaces computed every step at once (with
    attention edges over causal, sliding and full windows) or by forward or backward
    recurrences, in any order; reads of the past and of the future inside and outside
    recurrences; ids inputs read by embedding; the step number embedded as positions."""
    n = draw(st.integers(3, most))
    causal = draw(st.sampled_from([False, True]))  # no h[t+k], no k[..]: it runs in chunks
    pool = tuple(name for name in SHARED_NAMES + SPACE_ONLY_NAMES + TIME_NAMES if name != over)
    n_ids = draw(st.sampled_from([0, 0, 1, 2]))
    all_names = draw(
        st.lists(st.sampled_from(pool), min_size=n + n_ids, max_size=n + n_ids, unique=True)
    )
    names, ids_names = all_names[:n], all_names[n:]
    sizes = draw(st.lists(st.sampled_from([1, 2, 2, 3, 4, 4]), min_size=n, max_size=n))
    role = st.integers(0, 9).map(lambda k: "input" if k < 3 else "space" if k < 8 else "output")
    roles = ["input"] + draw(st.lists(role, min_size=n - 1, max_size=n - 1))
    roles[draw(st.integers(1, n - 1))] = "output"
    group = [0]
    for _ in range(1, n):
        group.append(group[-1] + draw(st.booleans()))
    group_kind = st.sampled_from([k for k in GROUP_KINDS if not (causal and k == "backward")])
    kinds = draw(st.lists(group_kind, min_size=group[-1] + 1, max_size=group[-1] + 1))
    counts = [draw(st.integers(2, 5)) for _ in ids_names]

    edge_pool = [name for name in draw(st.permutations(SHARED_NAMES)) if name not in all_names]
    edges: list[Edge] = []

    def add(reads, writes, ops, delays=(), windows=(), ctx=0) -> None:
        edges.append(
            Edge(
                name=edge_pool[len(edges)],
                reads=tuple(reads),
                writes=tuple(names[w] for w in writes),
                ops=ops,
                product=draw(st.sampled_from(["×", "*"])),
                arrow=draw(st.sampled_from(["->", "→"])),
                delays=tuple(delays) if delays else (0,) * len(reads),
                windows=tuple(windows),
                ctx=ctx,
            )
        )

    must = [j for j in range(1, n) if roles[j] != "input"]
    more = draw(st.lists(st.integers(1, n - 1), max_size=3))
    for j in must + more:
        later = list(range(j + 1, n))
        writes = [j]
        if later:
            writes += draw(st.lists(st.sampled_from(later), max_size=1))
        writes = draw(st.permutations(writes))
        kind = kinds[group[j]]
        if kind == "all" and draw(st.integers(0, 2)) > 0:
            reads, ops, windows = draw(attention_edge(j, sizes, writes, names, causal))
            add(reads, writes, ops, windows=windows)
            continue
        allowed = [
            (i, k)
            for i in range(n)
            for k in sequence_delays(i, j, group, kinds)
            if not (causal and k < 0)
        ]
        same = [(i, k) for i, k in allowed if sizes[i] == sizes[j]]
        if len(writes) == 1 and len(same) >= 2 and draw(st.integers(0, 4)) == 0:
            inputs = draw(st.lists(st.sampled_from(same), min_size=2, max_size=3))
            ops = (Op("mul", "mul"),) + draw(st.sampled_from([(), (Op("tanh", "tanh"),)]))
            event("a gate (mul)")
        else:
            now = [(i, 0) for i, k in allowed if k == 0]
            other = [(i, k) for i, k in allowed if k]
            inputs = draw(st.lists(st.sampled_from(now), max_size=2, unique=True)) if now else []
            if (j - 1, 0) not in inputs and draw(st.booleans()):  # chains make deep machines
                inputs.append((j - 1, 0))
            if other:
                inputs += draw(st.lists(st.sampled_from(other), max_size=2))
            if kind != "all" and draw(st.integers(0, 2)) > 0:  # the target's own recurrence
                lag = draw(st.integers(1, 3))
                inputs.append((j, lag if kind == "forward" else -lag))
            if not inputs:
                inputs = [(j - 1, 0)]
            inputs = draw(st.permutations(inputs))
            n_in = sum(sizes[i] for i, _ in inputs)
            n_out = sum(sizes[w] for w in writes)
            choices = pipelines(n_in, n_out, draw(st.integers(2, 6)))
            if min(n_in, n_out) == 1:  # see random_machines
                choices = [c for c in choices if all(op.kind != "layernorm" for op in c)]
            ops = draw(st.sampled_from(choices))
        add([names[i] for i, _ in inputs], writes, ops, delays=[k for _, k in inputs])
    for name in ids_names:  # every ids input feeds an embedding
        j = draw(st.integers(0, n - 1))
        add([name], [j], embedding_ops(draw, "", sizes[j]))
        event("ids read by embedding")
    if draw(st.integers(0, 2)) == 0:  # positions
        j = draw(st.integers(0, n - 1))
        ctx = draw(CTX)
        count = draw(st.sampled_from([f"{ctx}", f"num={ctx}"]))
        add([], [j], embedding_ops(draw, count, sizes[j]), ctx=ctx)
        event("positions")
    spaces = [Space(names[j], sizes[j], roles[j]) for j in range(n)]
    spaces += [
        Space(name, 1, "input", ids=count) for name, count in zip(ids_names, counts, strict=True)
    ]
    declared = draw(st.permutations(spaces))
    spec = Spec(
        name=machine,
        spaces=tuple(declared),
        edges=tuple(draw(st.permutations(edges))),
        declarations=tuple(
            f"{s.role:<6} {s.name} : {f'ids({s.ids})' if s.ids else s.size}" for s in declared
        ),
        over=over,
    )
    loops = sorted({direction for direction, _, _ in recurrences(spec)})
    event(f"loops: {', '.join(loops) or 'none'}")
    future = [k for e in spec.edges for k in e.delays if k < 0]
    if future:
        event("a read of the future")
    assert spec.causal or not causal
    event("causal" if spec.causal else "not causal")
    return spec


@st.composite
def sequence_cases(draw):
    """A sequence machine, the spaces x0 is given on (always its ids), a seed, 2..5 steps."""
    over = draw(st.sampled_from(["t", "tau", "step"]))
    spec = draw(sequence_machines(over=over))
    names = [s.name for s in spec.spaces]
    support = draw(
        st.one_of(
            st.just(list(spec.inputs)),
            st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True),
        )
    )
    support += [name for name in spec.ids if name not in support]
    steps = draw(st.sampled_from([4, 3, 5, 2]))  # not mostly 2, the smallest
    return spec, support, draw(st.integers(0, 2**32 - 1)), steps


@settings(
    max_examples=150,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=sequence_cases())
def test_random_sequence_machines_follow_the_machine_equation(case) -> None:
    """Reads of the future (shifts the other way, zero after the last step), attention over
    windows, ids and positions: f, the resolvent against the naive iteration, the machine
    equation, forward, gradients, chunks (causal) or ValueError (not), steps=, lengths=."""
    spec, support, seed, steps = case
    source = spec.render()
    note(source)
    note(f"x0 given on {support}, seed {seed}, {steps} steps")
    cls = load_classes(source, "random_sequence.mach")[spec.name]
    check_against_definition(cls, spec, seed, 2, support, steps)


@settings(
    max_examples=30,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=sequence_machines(), data=st.data())
def test_a_read_against_the_direction_of_a_loop_is_e013(spec: Spec, data) -> None:
    """An edge that reads a space of a loop at a step the loop's direction cannot reach
    (a forward loop's space at t+k, a backward one's at t-k) and writes a space of the
    same loop closes a cycle through both earlier and later steps: E013."""
    loops = recurrences(spec)
    event(f"{len(loops)} loops")
    if not loops:
        return
    direction, _, spaces = data.draw(st.sampled_from(loops))
    read = data.draw(st.sampled_from(sorted(spaces)))
    written = data.draw(st.sampled_from(sorted(spaces)))
    lag = data.draw(st.integers(1, 3))
    against = Edge(
        "against",
        (read,),
        (written,),
        (Op("linear", "linear"),),
        delays=(-lag if direction == "forward" else lag,),
    )
    source = replace(spec, edges=(*spec.edges, against)).render()
    note(source)
    with pytest.raises(machc.CompileError) as info:
        machc.check_source(source, "against.mach")
    assert [d.code.value for d in info.value.errors] == ["E013"], str(info.value)
    assert "earlier and later steps" in info.value.errors[0].message


# --- sequence machines the random ones found wrong (minimal reproductions) --------------------


def compiled(source: str, name: str = "M") -> nn.Module:
    model = load_classes(source, "found.mach")[name]().double().eval()
    randomize(model, torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("read", ["tok[t-1]", "tok[t+1]"])
def test_ids_read_at_another_step_are_e019(read: str) -> None:
    """Outside the sequence the one-hot view of ids is the zero vector, which no id stands
    for (reading it once embedded id 0, and forward crashed on a past of float zeros)."""
    source = (
        "machine M over t {\n    input  tok : ids(3)\n    output y : 2\n\n"
        f"    emb : {read} -> y = embedding\n}}\n"
    )
    with pytest.raises(machc.CompileError) as info:
        machc.check_source(source, "ids.mach")
    assert [d.code.value for d in info.value.errors] == ["E019"], str(info.value)


def test_a_space_read_at_a_delay_and_through_a_window_runs_in_chunks() -> None:
    """One key of the state holds both its past and its history (once its last step only,
    which the next chunk's attention read as the whole history)."""
    model = compiled(
        "machine M over t {\n    input  x : 2\n    space  h : 2\n    output y : 2\n\n"
        "    rec  : x × h[t-1] -> h = linear | tanh\n"
        "    attn : h × h[0..t] × h[0..t] -> y = attention(1)\n}\n"
    )
    x = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first, state = model(x[:, :2], return_state=True)
    second = model(x[:, 2:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), model(x))


def test_a_state_has_what_edges_after_the_loop_add() -> None:
    """g is written by the loop and by an edge after it; the state once held the loop's
    part of g only, so the next chunk read a wrong g[t-1]."""
    model = compiled(
        "machine M over t {\n    input  x : 2\n    space  h : 2\n    space  g : 2\n"
        "    output y : 2\n\n"
        "    rec  : x × h[t-1] -> h × g = linear\n"
        "    more : h -> g = tanh\n"
        "    read : g[t-1] -> y = identity\n}\n"
    )
    x = torch.randn(1, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole, state = model(x, return_state=True)
    torch.testing.assert_close(state["g"], model.resolvent({"x": x})["g"][:, -1:])
    first, carried = model(x[:, :2], return_state=True)
    torch.testing.assert_close(torch.cat([first, model(x[:, 2:], state=carried)], 1), whole)


def test_keys_and_values_with_histories_of_different_lengths_run_in_chunks() -> None:
    """x is also read through x[0..t], so its whole history is kept, v only its last step:
    the next chunk's attention once joined pasts of different lengths (RuntimeError)."""
    model = compiled(
        "machine M over t {\n    input  x : 2\n    space  v : 2\n    output y : 2\n"
        "    output u : 2\n\n"
        "    val : x -> v = linear\n"
        "    a   : x × x[0..t] × x[0..t] -> y = attention(1)\n"
        "    b   : x × x[t-1..t] × v[t-1..t] -> u = attention(1)\n}\n"
    )
    x = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first, state = model(x[:, :2], return_state=True)
    second = model(x[:, 2:], state=state)
    for a, b, whole in zip(first, second, model(x), strict=True):
        torch.testing.assert_close(torch.cat([a, b], 1), whole)


# --- random machines over signals and images ----------------------------------------------

MAX_SIDE = 16  # no spatial axis grows beyond this (upsampling doubles)

# Kinds of edges, by what they do to the spatial axes of what they read (all read spaces
# share those axes). "same", "down_pool" (maxpool/avgpool 2), "down_conv" (stride 2),
# "up" (upsample 2): spatial to spatial; "global" (global_avg_pool), "flatten",
# "conv_flatten" (conv | flatten): spatial to vector; "dense": vector to vector;
# "reshape": vector to spatial. add / mul are drawn as variants of "same" and "dense".
SPATIAL_KINDS = ("same", "down_pool", "down_conv", "up", "global", "flatten", "conv_flatten")
VECTOR_KINDS = ("dense", "reshape")


def kinds_from(shape: tuple[int, ...]) -> list[str]:
    """The kinds of edges that can read spaces of this shape."""
    if len(shape) == 1:
        return list(VECTOR_KINDS)
    kinds = ["same", "down_conv", "global", "flatten", "conv_flatten"]
    if min(shape[1:]) >= 2:
        kinds.append("down_pool")
    if 2 * max(shape[1:]) <= MAX_SIDE:
        kinds.append("up")
    return kinds


def kinds_between(a: tuple[int, ...], b: tuple[int, ...]) -> list[str]:
    """The kinds of edges that read spaces of shape a and write spaces of shape b."""
    sa, sb = a[1:], b[1:]
    if not sa:
        return ["dense"] if not sb else ["reshape"]
    if not sb:
        kinds = ["global", "flatten"]
        return kinds + (["conv_flatten"] if b[0] % math.prod(sa) == 0 else [])
    if len(sa) != len(sb):
        return []
    kinds = []
    if sb == sa:
        kinds.append("same")
    if min(sa) >= 2 and sb == tuple(n // 2 for n in sa):
        kinds.append("down_pool")
    if sb == tuple((n - 1) // 2 + 1 for n in sa):
        kinds.append("down_conv")
    if sb == tuple(2 * n for n in sa):
        kinds.append("up")
    return kinds


@st.composite
def free_shapes(draw) -> tuple[int, ...]:
    """The shape of a space nothing has to write: an image, a signal or a vector."""
    channels = draw(st.integers(1, 4))
    rank = draw(st.sampled_from([2, 2, 2, 1, 1, 0]))
    return (channels, *draw(st.lists(st.integers(4, 8), min_size=rank, max_size=rank)))


@st.composite
def made_shapes(draw, kind: str, a: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a space written by an edge of this kind from spaces of shape a."""
    c = draw(st.integers(1, 4))
    sa = a[1:]
    if kind == "same":
        return (c, *sa)
    if kind == "down_pool":
        return (c, *(n // 2 for n in sa))
    if kind == "down_conv":
        return (c, *((n - 1) // 2 + 1 for n in sa))
    if kind == "up":
        return (c, *(2 * n for n in sa))
    if kind == "conv_flatten":
        return (draw(st.integers(1, 2)) * math.prod(sa),)
    if kind == "reshape":
        rank = draw(st.integers(1, 2))
        return (c, *draw(st.lists(st.integers(2, 6), min_size=rank, max_size=rank)))
    if kind == "global" and draw(st.booleans()):  # a [C] vector for add / mul to broadcast
        return a[:1]
    return (draw(st.integers(1, 6)),)  # global, flatten, dense


ACTIVATION_OPS = (
    Op("relu", "relu"),
    Op("tanh", "tanh"),
    Op("sigmoid", "sigmoid"),
    Op("gelu", "gelu"),
    Op("silu", "silu"),
    Op("softplus", "softplus"),
    Op("leaky_relu", "leaky_relu(0.2)", arg=0.2),
    Op("elu", "elu(alpha=0.5)", arg=0.5),
)


def conv(k: int, padding: int | str = 0, stride: int = 1, out=None, bias=True, say_out=True):
    """conv(k, ...); ``out`` is the oracle's channel count, written only if ``say_out``."""
    args = [str(k)]
    args += [f"stride={stride}"] if stride != 1 else []
    args += ['padding="same"'] if padding == "same" else [f"padding={padding}"] if padding else []
    args += [] if bias else ["bias=false"]
    args += [f"out={out}"] if out is not None and say_out else []
    text = f"conv({', '.join(args)})"
    return Op("conv", text, out=out, bias=bias, kernel=k, stride=stride, padding=padding)


def linear(out=None, bias=True, say_out=True) -> Op:
    args = [f"out={out}"] if out is not None and say_out else []
    args += [] if bias else ["bias=false"]
    return Op("linear", f"linear({', '.join(args)})" if args else "linear", out=out, bias=bias)


def groupnorm(groups: int) -> Op:
    return Op("groupnorm", f"groupnorm({groups})", groups=groups)


BATCHNORM = Op("batchnorm", "batchnorm")
BATCHNORM_EPS = Op("batchnorm", "batchnorm(eps=0.001)", eps=0.001)


@st.composite
def tensor_pipelines(
    draw, kind: str, n_in: int, n_out: int, a: tuple[int, ...], at_call: bool = False
) -> tuple:
    """A pipeline of this kind from n_in channels with spatial axes a[1:] to n_out channels
    (``at_call``: sizes known only at call time, which no layernorm normalises over)."""
    act = draw(st.sampled_from(ACTIVATION_OPS))
    m = draw(st.integers(1, 4))  # inner channels
    k3 = conv(3, draw(st.sampled_from(["same", 1])))
    k1 = conv(1, draw(st.sampled_from(["same", 0])), bias=draw(st.booleans()))
    equal = n_in == n_out
    if kind == "same":
        # Every group of a groupnorm holds more than one value, and a layernorm more than one
        # feature: PyTorch's group norm refuses a batch of one group of one value, and the
        # gradient through either is rounding noise (see pipelines()).
        positions = math.prod(a[1:])
        g = draw(st.sampled_from([g for g in (1, 2, 4) if m % g == 0]))
        choices = [
            (k3,),
            (k1, act),
            (linear(), act),
            (BATCHNORM, act, k3),
            (conv(1, bias=False, out=m), BATCHNORM_EPS, Op("relu", "relu"), linear()),
        ]
        if m // g * positions > 1:
            choices.append((conv(3, "same", out=m), groupnorm(g), act, conv(1)))
        if equal:
            groups = draw(st.sampled_from([g for g in (1, 2, 4) if n_in % g == 0]))
            choices += [(act,), (Op("identity", "identity"),), (BATCHNORM,)]
            if n_in // groups * positions > 1:
                choices.append((groupnorm(groups), act))
            if n_in * positions > 1 and not at_call:
                choices.append((Op("layernorm", "layernorm"), act))
    elif kind == "down_pool":
        pool = draw(
            st.sampled_from(
                [
                    Op("maxpool", "maxpool(2)", kernel=2),
                    Op("avgpool", "avgpool(kernel=2)", kernel=2),
                ]
            )
        )
        choices = [(pool, conv(1)), (conv(3, "same", out=m), act, pool, linear())]
        choices += [(pool,), (act, pool)] if equal else []
    elif kind == "down_conv":
        choices = [(conv(3, 1, stride=2),), (conv(3, 1, stride=2, bias=False), act)]
        choices += [(act, conv(1, stride=2))]
    elif kind == "up":
        up = draw(
            st.sampled_from([Op("upsample", "upsample(2)"), Op("upsample", "upsample(scale=2)")])
        )
        choices = [(up, k3), (conv(1, say_out=False), act, up)]
        choices += [(up,), (up, act)] if equal else []
    elif kind == "global":
        gap = Op("global_avg_pool", "global_avg_pool")
        choices = [(gap, linear()), (conv(1, out=m), Op("relu", "relu"), gap, linear())]
        choices += [(gap,), (gap, act)] if equal else []
    elif kind == "flatten":
        flat = Op("flatten", "flatten")
        choices = [(flat, linear()), (act, flat, linear(out=m), Op("relu", "relu"), linear())]
    elif kind == "conv_flatten":
        flat = Op("flatten", "flatten")
        c = n_out // math.prod(a[1:])
        say = draw(st.booleans())
        choices = [(conv(3, "same", out=c, say_out=say), flat)]
        choices += [(conv(1, out=c, say_out=say), act, flat)]
    elif kind == "reshape":
        shape = (n_out, *a[1:])
        size = math.prod(shape)
        reshape = Op("reshape", f"reshape([{', '.join(map(str, shape))}])", shape=shape)
        choices = [(linear(out=size), reshape), (act, linear(out=size), reshape, act)]
    else:  # dense
        choices = pipelines(n_in, n_out, m)
    return draw(st.sampled_from(choices))


def render_shape(shape: tuple[int, ...], bracket: bool) -> str:
    if len(shape) == 1 and not bracket:
        return str(shape[0])
    return "[" + ", ".join(map(str, shape)) + "]"


@st.composite
def tensor_machines(draw, machine: str = "M") -> Spec:
    """Random acyclic machines over images, signals and vectors (see the kinds above)."""
    n = draw(st.integers(3, 8))
    names = draw(
        st.lists(
            st.sampled_from(SHARED_NAMES + SPACE_ONLY_NAMES), min_size=n, max_size=n, unique=True
        )
    )
    # `names` is the topological order, as in random_machines.
    role = st.integers(0, 9).map(lambda k: "input" if k < 3 else "space" if k < 8 else "output")
    roles = ["input"] + draw(st.lists(role, min_size=n - 1, max_size=n - 1))
    roles[draw(st.integers(1, n - 1))] = "output"
    # Shapes: a space that must be written is made by some kind of edge from an earlier one.
    shapes: list[tuple[int, ...]] = []
    for j in range(n):
        if j == 0 or (roles[j] == "input" and draw(st.booleans())):
            shapes.append(draw(free_shapes()))
            continue
        gated = [a for a in shapes if len(a) > 1 and a[:1] in shapes]
        if gated and draw(st.integers(0, 2)) == 0:  # room for a [C] vector to gate a [C, *S]
            shapes.append(draw(made_shapes("same", draw(st.sampled_from(gated)))))
            continue
        # Often the space just before: chains make deep machines.
        source = shapes[j - 1 if draw(st.integers(0, 3)) else draw(st.integers(0, j - 1))]
        shapes.append(draw(made_shapes(draw(st.sampled_from(kinds_from(source))), source)))

    must = [j for j in range(1, n) if roles[j] != "input"]
    more = draw(st.lists(st.integers(1, n - 1), max_size=3))
    edge_names = [name for name in draw(st.permutations(SHARED_NAMES)) if name not in names]
    edges = []
    for target in must + more:
        options = [
            (p, kind) for p in range(target) for kind in kinds_between(shapes[p], shapes[target])
        ]
        if not options:
            continue  # an extra edge into a space nothing earlier can make

        def vectors(p: int, target=target) -> list[int]:  # [C] vectors to broadcast over p
            a = shapes[p]
            return [q for q in range(target) if len(a) > 1 and shapes[q] == a[:1]]

        gates = [(p, kind) for p, kind in options if kind == "same" and vectors(p)]
        gate = bool(gates) and draw(st.integers(0, 2)) == 0
        if gate:  # a gate or a bias: add / mul with a [C] vector broadcast over an image
            options = gates
        elif draw(st.integers(0, 3)):  # chains make deep machines
            options = [option for option in options if option[0] == options[-1][0]]
        p, kind = draw(st.sampled_from(options))
        a = shapes[p]
        combiner = None
        if gate or (kind in ("same", "dense") and draw(st.integers(0, 3)) == 0):
            combiner = draw(st.sampled_from(["add", "mul"]))
            like = [q for q in range(target) if shapes[q] == a]
            reads = [p] + draw(st.lists(st.sampled_from(like), max_size=2))
            if gate:
                reads += draw(st.lists(st.sampled_from(vectors(p)), min_size=1, max_size=2))
            elif len(reads) == 1:
                reads.append(draw(st.sampled_from(like)))
            reads = draw(st.permutations(reads))
            if any(len(shapes[q]) < len(a) for q in reads):
                event(f"{combiner} broadcasts a vector")
            n_in = a[0]
        else:
            like = [q for q in range(target) if q != p and shapes[q][1:] == a[1:]]
            reads = [p]
            if like:
                reads += draw(st.lists(st.sampled_from(like), max_size=2, unique=True))
            if draw(st.integers(0, 11)) == 11:
                reads.append(draw(st.sampled_from(reads)))
                event("a space read twice")
            reads = draw(st.permutations(reads))
            n_in = sum(shapes[q][0] for q in reads)
        later = [
            j
            for j in range(max(reads) + 1, n)
            if j != target and shapes[j][1:] == shapes[target][1:]
        ]
        writes = [target]
        if later:
            writes += draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
        writes = draw(st.permutations(writes))
        n_out = sum(shapes[j][0] for j in writes)
        if kind == "conv_flatten" and n_out % math.prod(a[1:]):
            kind = "flatten"
        ops = draw(tensor_pipelines(kind, n_in, n_out, a if kind != "reshape" else shapes[target]))
        if combiner:
            ops = (Op(combiner, combiner), *ops)
        event(f"edge kind {combiner or kind}")
        edges.append(
            Edge(
                name=edge_names[len(edges)],
                reads=tuple(names[q] for q in reads),
                writes=tuple(names[j] for j in writes),
                ops=ops,
                product=draw(st.sampled_from(["×", "*"])),
                guard=draw(guards()),
            )
        )
    edges = draw(st.permutations(edges))
    if any(len(e.writes) > 1 for e in edges):
        event("an edge writes several spaces")
    if len({w for e in edges for w in e.writes}) < sum(len(e.writes) for e in edges):
        event("several edges write one space")
    declared = draw(st.permutations(range(n)))
    declarations = tuple(
        f"{roles[j]:<6} {names[j]} : {render_shape(shapes[j], draw(st.booleans()))}"
        for j in declared
    )
    spaces = tuple(Space(names[j], shapes[j], roles[j]) for j in declared)
    return Spec(name=machine, spaces=spaces, edges=tuple(edges), declarations=declarations)


@settings(
    max_examples=60,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases(tensor_machines))
def test_random_tensor_machines_follow_the_machine_equation(case) -> None:
    check_case(case)


# --- machines with sizes known at call time ------------------------------------------------

# The spatial axes of the first input: size symbols (one symbol twice: square images), or
# a fixed size (None: FIXED). Every space has a level: its sizes are its symbols' times
# 2^level (a vector: None), written in one of several forms (SIZE_FORMS) that are equal
# when each symbol is a multiple of 4, and differ for some other sizes: check records the
# relation, and forward checks it on every call.
SYMBOL_AXES = (("L",), ("T",), ("H", "W"), ("H", "W"), ("S", "S"), ("H", None))
FIXED = 8
LEVELS = (-2, -1, 0, 1)
SIZE_FORMS = {
    -2: ("{s} // 4", "({s} + 3) // 4", "{s} // 2 // 2", "(({s} - 1) // 2 + 1) // 2"),
    -1: ("{s} // 2", "({s} + 1) // 2", "({s} - 1) // 2 + 1", "{s} - {s} // 2"),
    0: ("{s}", "{s}", "2 * ({s} // 2)", "{s} // 4 * 4 + {s} % 4"),
    1: ("2 * {s}", "{s} + {s}", "2 * {s} // 2 * 2"),
}
# Sizes that keep every form of every level equal: multiples of 4 (two bindings are drawn).
GOOD_SIZES = (4, 8, 12, 16)
# Sizes of the first symbol (the others at 8) tried for one that breaks some relation.
ODD_SIZES = (9, 10, 11, 13, 14, 15)


def size_values(shape: tuple, sizes: dict[str, int]) -> tuple[int, ...]:
    """A shape with sizes as text ("H // 2", as SPACES and the spec write them) at sizes."""
    return tuple(
        eval(n, {"__builtins__": {}}, dict(sizes)) if isinstance(n, str) else n  # noqa: S307
        for n in shape
    )


def axis_text(draw, symbol: str | None, level: int) -> str | int:
    if symbol is None:
        return int(FIXED * 2.0**level)
    return draw(st.sampled_from(SIZE_FORMS[level])).format(s=symbol)


def made_sizes(kind: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """What an edge of this kind makes of spatial sizes (see tensor_pipelines)."""
    if kind == "down_pool":
        return tuple(n // 2 for n in sizes)
    if kind == "down_conv":
        return tuple((n - 1) // 2 + 1 for n in sizes)
    if kind == "up":
        return tuple(2 * n for n in sizes)
    return sizes


@dataclass(frozen=True)
class SymbolicSpec:
    """A machine whose shapes hold sizes as text (``spec``), with what its edges do to
    the spatial sizes (``kinds``), so that it can be had at any sizes of its symbols."""

    spec: Spec
    symbols: tuple[str, ...]
    kinds: dict[str, str]  # edge -> same, down_pool, down_conv, up, global, dense
    binder: str  # the input whose axes are the symbols

    def at(self, sizes: dict[str, int]) -> Spec:
        """The machine at these sizes (a spec with numbers only)."""
        spaces = tuple(replace(s, size=size_values(s.shape, sizes)) for s in self.spec.spaces)
        return replace(self.spec, spaces=spaces)

    def holds(self, sizes: dict[str, int]) -> bool:
        """Whether every edge gets spaces of one spatial size and makes what its outputs
        have, at these sizes: every relation check recorded holds."""
        shape = self.at(sizes).shape
        if any(min(s[1:], default=1) < 1 for s in shape.values()):
            return False
        for edge in self.spec.edges:
            reads = {shape[r][1:] for r in edge.reads if len(shape[r]) > 1}
            if len(reads) > 1:
                return False
            if self.kinds[edge.name] in ("global", "dense"):
                continue
            made = made_sizes(self.kinds[edge.name], reads.pop())
            if any(shape[w][1:] != made for w in edge.writes):
                return False
        return True


@st.composite
def symbolic_machines(draw, machine: str = "M") -> SymbolicSpec:
    """Random acyclic machines over signals and images whose first input has size
    symbols: spaces of four levels (a quarter to twice the input's sizes) and vectors,
    edges that keep the sizes, halve them (pooling, stride 2), double them (upsampling)
    or pool them away, with shapes written in several forms; several edges into one
    space, edges of several reads and writes, add and mul, edges inside ifs; now and then
    a second input with the same symbols, and a parameter used in conditions."""
    axes = draw(st.sampled_from(SYMBOL_AXES))
    symbols = tuple(dict.fromkeys(a for a in axes if a))
    n = draw(st.integers(3, 7))
    pool = [name for name in SHARED_NAMES + SPACE_ONLY_NAMES if name not in symbols]
    names = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique=True))
    role = st.integers(0, 9).map(lambda k: "input" if k < 2 else "space" if k < 8 else "output")
    roles = ["input"] + draw(st.lists(role, min_size=n - 1, max_size=n - 1))
    roles[draw(st.integers(1, n - 1))] = "output"
    channels = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    levels: list[int | None] = [0]
    for j in range(1, n):
        if roles[j] == "input":  # the input's symbols again (bound twice), or a vector
            levels.append(draw(st.sampled_from([0, None])))
            continue
        source = levels[j - 1 if draw(st.integers(0, 3)) else draw(st.integers(0, j - 1))]
        if source is None:
            levels.append(None)
            continue
        steps = [source + d for d in (-1, -1, 1) if source + d in LEVELS]
        levels.append(draw(st.sampled_from([source, None, *steps, *steps])))
    shapes = [  # an input's axis is a number or one symbol by itself
        (c,)
        if level is None
        else (c, *(a or FIXED for a in axes))
        if roles[j] == "input"
        else (c, *(axis_text(draw, a, level) for a in axes))
        for j, (c, level) in enumerate(zip(channels, levels, strict=True))
    ]
    # The sizes at the smallest binding, for the pipelines that count positions.
    smallest = [size_values(shape, dict.fromkeys(symbols, 4)) for shape in shapes]

    def kinds_between(p: int, t: int) -> list[str]:
        lp, lt = levels[p], levels[t]
        if lp is None:
            return ["dense"] if lt is None else []
        if lt is None:
            return ["global"]
        return {0: ["same"], -1: ["down_pool", "down_conv"], 1: ["up"]}.get(lt - lp, [])

    param = "k" if draw(st.booleans()) else ""
    must = [j for j in range(1, n) if roles[j] != "input"]
    more = draw(st.lists(st.integers(1, n - 1), max_size=3))
    edge_names = [name for name in draw(st.permutations(SHARED_NAMES)) if name not in names]
    edge_names = [name for name in edge_names if name not in (*symbols, param)]
    edges, kinds = [], {}
    for target in must + more:
        options = [(p, kind) for p in range(target) for kind in kinds_between(p, target)]
        if not options:
            continue
        if draw(st.integers(0, 3)):  # chains make deep machines
            options = [option for option in options if option[0] == options[-1][0]]
        p, kind = draw(st.sampled_from(options))
        like = [q for q in range(target) if q != p and levels[q] == levels[p]]
        combiner = None
        if kind in ("same", "dense") and draw(st.integers(0, 3)) == 0:
            same = [q for q in range(target) if channels[q] == channels[p] and q in (p, *like)]
            combiner = draw(st.sampled_from(["add", "mul"]))
            reads = draw(st.permutations([p, draw(st.sampled_from(same))]))
            n_in = channels[p]
        else:
            reads = [p] + draw(st.lists(st.sampled_from(like), max_size=2)) if like else [p]
            reads = draw(st.permutations(reads))
            n_in = sum(channels[q] for q in reads)
        later = [
            j
            for j in range(max(reads) + 1, n)
            if j != target and roles[j] != "input" and levels[j] == levels[target]
        ]
        writes = [target]
        if later:
            writes += draw(st.lists(st.sampled_from(later), max_size=1))
        writes = draw(st.permutations(writes))
        n_out = sum(channels[j] for j in writes)
        ops = draw(tensor_pipelines(kind, n_in, n_out, smallest[p], at_call=True))
        if combiner:
            ops = (Op(combiner, combiner), *ops)
        event(f"edge kind {combiner or kind}")
        name = edge_names[len(edges)]
        kinds[name] = kind
        edges.append(
            Edge(
                name=name,
                reads=tuple(names[q] for q in reads),
                writes=tuple(names[j] for j in writes),
                ops=ops,
                product=draw(st.sampled_from(["×", "*"])),
                guard=draw(guards(param)),
            )
        )
    edges = draw(st.permutations(edges))
    declared = draw(st.permutations(range(n)))
    declarations = tuple(
        f"{roles[j]:<6} {names[j]} : {render_shape(shapes[j], draw(st.booleans()))}"
        for j in declared
    )
    spaces = tuple(Space(names[j], shapes[j], roles[j]) for j in declared)
    spec = Spec(
        name=machine,
        spaces=spaces,
        edges=tuple(edges),
        declarations=declarations,
        params="(k: int = 2)" if param else "",
    )
    return SymbolicSpec(spec, symbols, kinds, names[0])


@st.composite
def symbolic_cases(draw):
    """A machine with size symbols, two bindings of multiples of 4 (a different size for
    each symbol where there are several), an x0 support that binds every symbol, a seed
    and a batch size."""
    sym = draw(symbolic_machines())
    bindings = []
    for _ in range(2):
        values = draw(
            st.lists(
                st.sampled_from(GOOD_SIZES),
                min_size=len(sym.symbols),
                max_size=len(sym.symbols),
                unique=True,
            )
        )
        bindings.append(dict(zip(sym.symbols, values, strict=True)))
    names = [s.name for s in sym.spec.spaces]
    support = [sym.binder] + draw(
        st.lists(st.sampled_from(names), max_size=len(names), unique=True)
    )
    support = list(dict.fromkeys(support))
    return sym, bindings, support, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3))


def inputs_at(spec: Spec, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [
        torch.randn(batch, *spec.shape[name], generator=gen, dtype=torch.float64)
        for name in spec.inputs
    ]


@settings(
    max_examples=40,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=symbolic_cases())
def test_random_machines_with_sizes_known_at_call_time_follow_the_machine_equation(case) -> None:
    """One compiled module at two sizes of its symbols: SPACES (text) and shapes() are the
    spec's shapes there, and the machine equation holds at both (f, resolvent, forward,
    gradients, adjoint); its example inputs are taken; at a size where some relation
    between sizes breaks, forward raises machc.runtime.SizeError naming it, and at one
    where all hold it computes the definition; a symbol bound twice to two sizes is a
    SizeError too."""
    sym, bindings, support, seed, batch = case
    source = sym.spec.render()
    note(source)
    note(f"sizes {bindings}, x0 given on {support}, seed {seed}, batch {batch}")
    cls = load_classes(source, "random_sizes.mach")[sym.spec.name]
    assert any(isinstance(n, str) for n in cls.SPACES[sym.binder])
    for sizes in bindings:
        assert sym.holds(sizes)
        model = check_against_definition(cls, sym.at(sizes), seed, batch, support, sizes=sizes)
    gen = torch.Generator().manual_seed(seed)
    example = model.example_inputs(batch)
    declared = cls.SPACES[sym.binder]
    given = example[sym.spec.inputs.index(sym.binder)].shape[1:]
    ex = {n: size for n, size in zip(declared, given, strict=True) if n in sym.symbols}
    assert set(ex) == set(sym.symbols) and min(ex.values()) >= 32
    assert sym.holds(ex), ex
    result = as_outputs(sym.spec, model(*example))
    assert {k: tuple(v.shape[1:]) for k, v in result.items()} == {
        k: model.shapes(**ex)[k] for k in sym.spec.outputs
    }
    # Other sizes: the first one that breaks a relation, and the first that keeps them all.
    broken = kept = None
    for n in ODD_SIZES:
        sizes = {s: n if s == sym.symbols[0] else 8 for s in sym.symbols}
        if sym.holds(sizes):
            kept = kept or sizes
        elif min(min(s[1:], default=1) for s in sym.at(sizes).shape.values()) >= 1:
            broken = broken or sizes
    if broken is not None:
        event("a size that breaks a relation")
        with pytest.raises(runtime.SizeError, match="does not hold for"):
            model(*inputs_at(sym.at(broken), batch, gen))
    if kept is not None:
        event("an odd size that keeps every relation")
        spec = sym.at(kept)
        inputs = inputs_at(spec, batch, gen)
        expected = naive_resolvent(model, spec, dict(zip(spec.inputs, inputs, strict=True)))
        assert_states_close(
            as_outputs(spec, model(*inputs)),
            {name: expected[name] for name in spec.outputs},
            f"forward at {kept}",
        )
    twice = [
        s.name
        for s in sym.spec.spaces
        if s.role == "input" and s.shape[1:] and s.name != sym.binder
    ]
    if twice:  # the second input's sizes are the first's: given other sizes, a SizeError
        event("a symbol bound by two inputs")
        spec = sym.at(bindings[0])
        inputs = inputs_at(spec, batch, gen)
        k = spec.inputs.index(twice[0])
        axis = 1 + [isinstance(n, str) for n in sym.spec.shape[twice[0]]].index(True)
        inputs[k] = torch.cat([inputs[k], inputs[k]], dim=axis)
        with pytest.raises(runtime.SizeError, match=" by "):
            model(*inputs)


# --- the bundled examples, with hand-written specs ---------------------------------------

LINEAR = Op("linear")
TANH = Op("tanh")
RELU = Op("relu")


def _hypergraph() -> Spec:
    sizes = {"X1": 4, "X2": 4, "X3": 8, "X4": 8, "X5": 3, "X6": 3, "X7": 3, "X8": 2}
    roles = {"X1": "input", "X2": "input", "X5": "output", "X8": "output"}
    spaces = tuple(Space(n, s, roles.get(n, "space")) for n, s in sizes.items())
    edges = (
        Edge("f1", ("X1", "X2"), ("X3",), (LINEAR, TANH)),
        Edge("f2", ("X1",), ("X5",), (LINEAR,)),
        Edge("f3", ("X3",), ("X4",), (LINEAR, TANH)),
        Edge("f4", ("X4",), ("X5", "X6", "X7"), (LINEAR,)),
        Edge("f5", ("X6",), ("X8",), (LINEAR, TANH)),
    )
    return Spec("Hypergraph", spaces, edges)


def _dense(depth: int = 4, width: int = 32) -> Spec:
    h = [f"h[{i}]" for i in range(1, depth + 1)]
    spaces = (
        Space("x", 16, "input"),
        *(Space(name, width, "space") for name in h),
        Space("y", 10, "output"),
    )
    edges = tuple(
        Edge(f"g[{i}]", ("x", *h[: i - 1]), (h[i - 1],), (LINEAR, RELU), attr=f"g.{i}")
        for i in range(1, depth + 1)
    ) + (Edge("head", (h[-1],), ("y",), (LINEAR,)),)
    return Spec("DenseMachine", spaces, edges)


def _digits(depth: int = 3, width: int = 48) -> Spec:
    h = [f"h[{i}]" for i in range(1, depth + 1)]
    spaces = (
        Space("pixels", 64, "input"),
        *(Space(name, width, "space") for name in h),
        Space("logits", 10, "output"),
    )
    block = (LINEAR, Op("layernorm"), Op("gelu"), Op("dropout", arg=0.1))
    edges = tuple(
        Edge(f"block[{i}]", ("pixels", *h[: i - 1]), (h[i - 1],), block, attr=f"block.{i}")
        for i in range(1, depth + 1)
    ) + (Edge("head", tuple(h), ("logits",), (LINEAR,)),)
    return Spec("DigitNet", spaces, edges)


def _residual() -> Spec:
    spaces = (
        Space("x", 16, "input"),
        Space("h", 32, "space"),
        Space("u", 32, "space"),
        Space("y", 32, "output"),
    )
    edges = (
        Edge("f", ("x",), ("h",), (LINEAR, RELU), attr="f_"),  # `f` is the method f(state)
        Edge("g", ("h",), ("u",), (LINEAR, RELU)),
        Edge("proj", ("x",), ("u",), (replace(LINEAR, bias=False),)),
        Edge("skip", ("u",), ("y",), (Op("identity"),)),
        Edge("out", ("u",), ("y",), (LINEAR,)),
    )
    return Spec("Residual", spaces, edges)


def _autoencoder() -> Spec:
    sizes = {"x": 6, "e": 4, "z": 2, "d": 4, "y": 6}
    roles = {"x": "input", "y": "output"}
    spaces = tuple(Space(n, s, roles.get(n, "space")) for n, s in sizes.items())
    edges = (
        Edge("enc1", ("x",), ("e",), (LINEAR, TANH)),
        Edge("enc2", ("e",), ("z",), (LINEAR, TANH)),
        Edge("dec1", ("z",), ("d",), (LINEAR, TANH)),
        Edge("dec2", ("d",), ("y",), (LINEAR,)),
    )
    return Spec("AutoEncoder", spaces, edges)


def _conv(blocks: int = 4, c: int = 8) -> Spec:
    h = [f"h[{i}]" for i in range(1, blocks + 1)]
    spaces = (
        Space("img", (1, 28, 28), "input"),
        *(Space(name, (c, 28, 28), "space") for name in h),
        Space("logits", 10, "output"),
    )
    block = (conv(3, 1), RELU)
    edges = tuple(
        Edge(f"g[{i}]", ("img", *h[: i - 1]), (h[i - 1],), block, attr=f"g.{i}")
        for i in range(1, blocks + 1)
    ) + (Edge("head", (h[-1],), ("logits",), (Op("global_avg_pool"), LINEAR)),)
    return Spec("ConvMachine", spaces, edges)


def _unet() -> Spec:
    shapes = {
        "x": (3, 32, 32),
        "e1": (16, 32, 32),
        "e2": (32, 16, 16),
        "mid": (32, 16, 16),
        "up": (16, 32, 32),
        "y": (1, 32, 32),
    }
    roles = {"x": "input", "y": "output"}
    spaces = tuple(Space(n, s, roles.get(n, "space")) for n, s in shapes.items())
    edges = (
        Edge("enc1", ("x",), ("e1",), (conv(3, 1), BATCHNORM, RELU)),
        Edge("enc2", ("e1",), ("e2",), (Op("maxpool", kernel=2), conv(3, 1), RELU)),
        Edge("bott", ("e2",), ("mid",), (conv(3, 1), RELU)),
        Edge("dec", ("mid",), ("up",), (Op("upsample"), conv(3, 1), RELU)),
        Edge("head", ("up", "e1"), ("y",), (conv(1),)),
    )
    return Spec("TinyUNet", spaces, edges)


def _gated() -> Spec:
    roles = {"x": "input", "y": "output"}
    spaces = tuple(Space(n, 8, roles.get(n, "space")) for n in ("x", "a", "b", "y"))
    edges = (
        Edge("fa", ("x",), ("a",), (LINEAR, Op("sigmoid"))),
        Edge("fb", ("x",), ("b",), (LINEAR, TANH)),
        Edge("gate", ("a", "b"), ("y",), (Op("mul"),)),
    )
    return Spec("Gated", spaces, edges)


EXAMPLE_SPECS = {
    "hypergraph.mach": _hypergraph,
    "dense.mach": _dense,
    "digits.mach": _digits,
    "residual.mach": _residual,
    "autoencoder.mach": _autoencoder,
    "conv.mach": _conv,
    "unet.mach": _unet,
    "gated.mach": _gated,
}


@pytest.mark.parametrize("support", ["inputs", "all", "hidden", "one"])
@pytest.mark.parametrize("filename", list(EXAMPLE_SPECS))
def test_examples_follow_the_machine_equation(filename: str, support: str) -> None:
    spec = EXAMPLE_SPECS[filename]()
    with warnings.catch_warnings():  # hypergraph.mach: X7 reaches no output, on purpose
        warnings.simplefilter("ignore", machc.MachcWarning)
        source = machc.compile_file(EXAMPLES / filename)
    namespace: dict = {"__name__": "machc_differential_examples"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - code we just generated
    names = [s.name for s in spec.spaces]
    given = {
        "inputs": list(spec.inputs),
        "all": names,
        "hidden": [s.name for s in spec.spaces if s.role == "space"],
        "one": [names[len(names) // 2]],
    }[support]
    seed = sum(map(ord, filename + support))
    check_against_definition(namespace[spec.name], spec, seed, 3, given)


def test_example_depths() -> None:
    """The oracle iterates depth + 1 times; the depths of the examples are known."""
    depths = {spec_name: make().depth() for spec_name, make in EXAMPLE_SPECS.items()}
    assert depths == {
        "hypergraph.mach": 4,
        "dense.mach": 5,
        "digits.mach": 4,
        "residual.mach": 3,
        "autoencoder.mach": 4,
        "conv.mach": 5,
        "unet.mach": 5,
        "gated.mach": 2,
    }


# --- machines with sub-machines as edges ---------------------------------------------------


@dataclass(frozen=True)
class SubMachine:
    """A machine with parameters (w: a space size, k: an inner width) used as an edge."""

    spec: Spec  # rendered with its parameters; its ops at the values the parent passes
    default: Spec  # its ops at the parameters' defaults
    call: str  # the parent's pipeline: Sub1(k=3, w=2)


@st.composite
def sub_machines(draw, name: str) -> SubMachine:
    """A small random vector machine (now and then one with a solved cycle) whose spaces of
    one size are declared `: w` and whose inner widths of one value are `out=k`; the parent
    passes both by name (or leaves w to its default, the size drawn), k often differing
    from its default."""
    if draw(st.integers(0, 2)) == 2:
        spec = draw(cyclic_machines(name, most_cycles=1, most_ones=2))
        event("a machine with a solved cycle used as an edge")
    else:
        spec = draw(random_machines(name, most=4, largest=4))
    w = draw(st.sampled_from(sorted({s.size for s in spec.spaces})))
    declarations = tuple(re.sub(rf": {w}$", ": w", line) for line in spec.declarations)
    params, args = [f"w: int = {w}"], [f"w={w}"] if draw(st.booleans()) else []
    inner = sorted({op.out for e in spec.edges for op in e.ops if op.out is not None})
    default_edges = spec.edges
    if inner:
        k, k_default = draw(st.sampled_from(inner)), draw(st.integers(1, 6))

        def with_k(edge: Edge, out: int, text: str) -> Edge:
            ops = tuple(
                replace(op, out=out, text=op.text.replace(f"out={k}", text)) if op.out == k else op
                for op in edge.ops
            )
            return replace(edge, ops=ops)

        params.append(f"k: int = {k_default}")
        if k != k_default or draw(st.booleans()):
            args.append(f"k={k}")
        default_edges = tuple(with_k(e, k_default, "out=k") for e in spec.edges)
        spec = replace(spec, edges=tuple(with_k(e, k, "out=k") for e in spec.edges))
    spec = replace(spec, declarations=declarations, params=f"({', '.join(params)})")
    args = draw(st.permutations(args))
    call = f"{name}({', '.join(args)})" if args or draw(st.booleans()) else name
    return SubMachine(spec, replace(spec, edges=default_edges), call)


@st.composite
def composed_machines(draw, subs: list[SubMachine]) -> Spec:
    """A vector machine whose edges include sub-machine edges (inputs and outputs mapped
    one by one onto spaces of the right sizes, existing ones or new ones made by random
    edges), shared(...) uses of a sub-machine edge or of a layer edge, and several edges
    into one space. Spaces are made in topological order: edges read earlier ones."""
    pool = draw(st.permutations(SHARED_NAMES + SPACE_ONLY_NAMES))
    edge_pool = draw(st.permutations(SHARED_NAMES)) + [f"g{i}" for i in range(30)]
    used: set[str] = set()
    sizes: list[int] = []
    roles: list[str] = []
    names: list[str] = []
    edges: list[Edge] = []

    def fresh(candidates) -> str:
        name = next(c for c in candidates if c not in used)
        used.add(name)
        return name

    def space(size: int, role: str) -> int:
        sizes.append(size)
        roles.append(role)
        names.append(fresh(pool))
        return len(sizes) - 1

    def made(size: int) -> int:
        """A space of this size: an input, or written from earlier spaces by a random edge."""
        if not sizes or draw(st.integers(0, 3)) == 0:
            return space(size, "input")
        reads = draw(st.lists(st.integers(0, len(sizes) - 1), min_size=1, max_size=2))
        n_in = sum(sizes[r] for r in reads)
        ops = draw(st.sampled_from(pipelines(n_in, size, draw(st.integers(1, 4)))))
        target = space(size, "space")
        edges.append(Edge(fresh(edge_pool), tuple(names[r] for r in reads), (names[target],), ops))
        return target

    def reads_of(wanted: list[int]) -> list[int]:
        reads = []
        for size in wanted:
            like = [j for j in range(len(sizes)) if sizes[j] == size]
            reads.append(
                draw(st.sampled_from(like)) if like and draw(st.booleans()) else made(size)
            )
        return reads

    def writes_of(wanted: list[int], reads: list[int]) -> list[int]:
        writes: list[int] = []
        for size in wanted:  # an existing space after the reads (several edges into it), or new
            like = [
                j
                for j in range(max(reads) + 1, len(sizes))
                if sizes[j] == size and roles[j] != "input" and j not in writes
            ]
            if like and draw(st.booleans()):
                writes.append(draw(st.sampled_from(like)))
                event("a sub-machine edge writes a space other edges write")
            else:
                writes.append(space(size, "space"))
        return writes

    def add(reads: list[int], writes: list[int], **fields) -> Edge:
        edge = Edge(
            fresh(edge_pool),
            tuple(names[j] for j in reads),
            tuple(names[j] for j in writes),
            product=draw(st.sampled_from(["×", "*"])),
            **fields,
        )
        edges.append(edge)
        return edge

    made(draw(st.integers(1, 4)))
    machine_edges: list[tuple[Edge, SubMachine]] = []
    for _ in range(draw(st.integers(1, 2))):
        sub = draw(st.sampled_from(subs))
        reads = reads_of([s.size for s in sub.spec.spaces if s.role == "input"])
        outs = [s.size for s in sub.spec.spaces if s.role == "output"]
        edge = add(reads, writes_of(outs, reads), ops=(Op("machine", sub.call),), text=sub.call)
        machine_edges.append((edge, sub))
    layered = [e for e in edges if any(op.has_layer for op in e.ops)]
    originals = [e for e, _ in machine_edges] + layered
    sharing = draw(st.integers(0, 2))  # how many shared(...) edges
    for original in draw(st.lists(st.sampled_from(originals), min_size=sharing, max_size=2)):
        size = dict(zip(names, sizes, strict=True))
        reads = reads_of([size[r] for r in original.reads])
        writes = writes_of([size[w] for w in original.writes], reads)
        # The same ops (and so the same layers, under the original's attribute).
        text = f"shared({original.name})"
        add(reads, writes, ops=original.ops, attr=original.layer_attr, text=text)
        event("shared(a sub-machine edge)" if original.text else "shared(a layer edge)")
    roles = [r if r == "input" else draw(st.sampled_from(["space", "output"])) for r in roles]
    roles[-1] = "output"
    declared = draw(st.permutations(range(len(sizes))))
    return Spec(
        name="M",
        spaces=tuple(Space(names[j], sizes[j], roles[j]) for j in declared),
        edges=tuple(draw(st.permutations(edges))),
        declarations=tuple(f"{roles[j]:<6} {names[j]} : {sizes[j]}" for j in declared),
    )


@st.composite
def composed_cases(draw):
    subs = [draw(sub_machines(name)) for name in ("Sub1", "Block")[: draw(st.integers(1, 2))]]
    parent = draw(composed_machines(subs))
    supports = []
    for spec in (parent, *(sub.spec for sub in subs)):
        names = [s.name for s in spec.spaces]
        supports.append(
            draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        )
    return subs, parent, supports, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3))


@settings(
    max_examples=30,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=composed_cases())
def test_random_machines_with_sub_machines_follow_the_machine_equation(case) -> None:
    """A sub-machine edge is its module's forward on the edge's inputs (a shared edge: the
    original's module or layers); the parent and every sub-machine class (at the passed
    parameters and at the defaults) follow the machine equation; shared edges hold no
    parameters of their own."""
    subs, parent, supports, seed, batch = case
    source = "\n".join([*(sub.spec.render() for sub in subs), parent.render()])
    note(source)
    note(f"x0 given on {supports}, seed {seed}, batch {batch}")
    namespace = load_classes(source, "random_composed.mach")

    def prepare(model: nn.Module) -> None:  # the solved cycles of sub-machines contract
        for edge in parent.edges:
            for sub in subs:
                if edge.text == sub.call and sub.spec.solves:
                    contract(getattr(model, edge.layer_attr), sub.spec)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a solve that did not converge
        model = check_against_definition(
            namespace["M"], parent, seed, batch, supports[0], prepare=prepare
        )
        # Every sub-machine class follows the vector oracle too: the class the parent
        # instantiates (at the parameters it passes) and the class at the defaults.
        for sub, support in zip(subs, supports[1:], strict=True):
            used = {type(getattr(model, e.layer_attr)) for e in parent.edges if e.text == sub.call}
            for cls in used:
                check_against_definition(cls, sub.spec, seed, batch, support)
            check_against_definition(namespace[sub.spec.name], sub.default, seed, batch, support)

    # Shared edges hold no parameters: the machine with a copy of each shared edge instead
    # (the original's pipeline written out again) has exactly the copies' parameters more.
    shared = [e for e in parent.edges if e.text.startswith("shared(")]
    if not shared:
        return
    copies = tuple(replace(e, attr="", text="") if e in shared else e for e in parent.edges)
    variant_source = "\n".join(
        [*(sub.spec.render() for sub in subs), replace(parent, edges=copies).render()]
    )
    variant = load_classes(variant_source, "random_copies.mach")["M"]()
    copied = {e.name for e in shared}
    keys = list(model.state_dict())
    assert not any(key.split(".")[0] in copied for key in keys), keys
    theirs = variant.state_dict().items()
    expected = {key: v.shape for key, v in theirs if key.split(".")[0] not in copied}
    assert {key: v.shape for key, v in model.state_dict().items()} == expected
    extra = sum(p.numel() for e in shared for p in getattr(variant, e.name).parameters())
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in variant.parameters()) - extra


# --- machines with solved cycles -----------------------------------------------------------

# Names generated code gives what belongs to a cycle through z: the function a solver
# iterates (cycle_z), the next iterate (z_next), what edges outside the cycle add (z_in)
# and the solver's attribute (solve_z). As names of spaces and of edges here.
CYCLE_NAMES = ("z_next", "z_in", "cycle_z", "solve_z", "h_next", "h_in", "cycle_h", "solve_h")
SOLVER_NAMES = ("fixed_point", "anderson", "broyden")
# Upper bounds of the slopes (Lipschitz constants) of the ops edges of cycles use.
SLOPES = {
    "tanh": 1.0,
    "relu": 1.0,
    "sigmoid": 0.25,
    "softplus": 1.0,
    "elu": 1.0,  # alpha <= 1
    "leaky_relu": 1.0,  # |slope| <= 1
    "silu": 1.1,
    "gelu": 1.13,
    "softmax": 1.0,
    "identity": 1.0,
    "dropout": 1.0,  # eval mode
}
CONTRACTION = 0.5  # every cycle's map, on the cycle's spaces, at least halves distances
POWER_ITERATIONS = 100  # for the largest singular value of a spectral_norm weight


def solved_cycles(spec: Spec) -> list[tuple[set[str], set[str]]]:
    """The cycles of a machine: the spaces and the edges of each strongly connected part."""
    parts = [p for p in nx.strongly_connected_components(space_time_graph(spec)) if len(p) > 1]
    return [({n for k, n in p if k == "space"}, {n for k, n in p if k == "edge"}) for p in parts]


def check_solvers(model: nn.Module, spec: Spec) -> None:
    """One runtime.Solve per solve item, built with its solver, tol, max_iter, backward and
    options (the others at the runtime's defaults)."""

    def described(solver, tol, max_iter, backward, options) -> str:
        return repr((solver, tol, max_iter, backward, sorted(options.items())))

    built = [
        described(m.solver, m.tol, m.max_iter, m.backward, m.options)
        for m in model.children()
        if isinstance(m, runtime.Solve)
    ]
    want = [
        described(
            s.solver, s.tol, s.max_iter, s.backward, {**runtime.SOLVERS[s.solver], **s.option_dict}
        )
        for s in spec.solves
    ]
    assert sorted(built) == sorted(want)


def edge_slope(model: nn.Module, edge: Edge, inside: set[str]) -> float:
    """A Lipschitz constant of an edge in the spaces of its cycle (the others held fixed):
    its reads of them concatenated (a space read twice counts twice), then its ops."""
    slope = math.sqrt(sum(r in inside for r in edge.reads))
    layers = iter(edge_layers(model, edge))
    for op in edge.ops:
        if op.kind == "linear":
            slope *= float(torch.linalg.matrix_norm(next(layers).weight.detach(), 2))
        elif op.kind == "scale":
            slope *= abs(op.arg)
        else:
            slope *= SLOPES[op.kind]
    return slope


def contract(model: nn.Module, spec: Spec) -> None:
    """Make every solved cycle a contraction by CONTRACTION (after randomize): spectral_norm
    weights get their largest singular value by power iteration; edges with a plain linear
    layer share what edges without one (a normalised weight and a small scale, or a scale
    alone) leave of the bound, their first plain layer rescaled to fit. The cycle's map then
    has a Lipschitz constant of at most the sum of its edges'."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            module.train()  # a power iteration whenever the weight is computed
            with torch.no_grad():
                for _ in range(POWER_ITERATIONS):
                    module.weight  # noqa: B018
            module.eval()
    for spaces, names in solved_cycles(spec):
        edges = [e for e in spec.edges if e.name in names]
        plain = [
            e for e in edges if any(op.kind == "linear" and not op.spectral_norm for op in e.ops)
        ]
        fixed = sum(edge_slope(model, e, spaces) for e in edges if e not in plain)
        assert fixed < CONTRACTION, f"the strategy drew too steep a cycle: {sorted(spaces)}"
        budget = (CONTRACTION - fixed) / max(len(plain), 1)
        for edge in plain:
            slope = edge_slope(model, edge, spaces)
            if slope > budget:
                layers = iter(edge_layers(model, edge))
                layer = next(
                    layer
                    for op in edge.ops
                    if op.has_layer
                    for layer in [next(layers)]
                    if not op.spectral_norm
                )
                with torch.no_grad():
                    layer.weight.mul_(budget / slope)
        bound = sum(edge_slope(model, e, spaces) for e in edges)
        assert bound <= CONTRACTION * (1 + 1e-9), (sorted(spaces), bound)


def cycle_pipelines(n_in: int, n_out: int, k: int, small: Op) -> list[tuple[Op, ...]]:
    """Pipelines for edges of a cycle, n_in features to n_out, k an inner size: Lipschitz
    (no layernorm, no mul), either with a plain linear layer (rescaled by contract()) or
    with a small scale after a normalised weight or none."""

    def act(kind, text=None, arg=None):
        return Op(kind, text or kind, arg=arg)

    spectral = Op("linear", "linear(spectral_norm=true)", spectral_norm=True)
    spectral_no_bias = Op(
        "linear", "linear(bias=false, spectral_norm=true)", bias=False, spectral_norm=True
    )
    choices = [
        (linear(), act("tanh")),
        (linear(),),
        (linear(bias=False), act("relu")),
        (linear(out=k), act("tanh"), linear()),
        (act("tanh"), linear()),
        (linear(), act("sigmoid")),
        (linear(), act("leaky_relu", "leaky_relu(0.2)", 0.2)),
        (linear(), act("gelu"), Op("dropout", "dropout(0.2)", arg=0.2)),
        (act("softplus"), linear(out=k), act("elu", "elu(alpha=0.5)", 0.5), linear()),
        (linear(), act("softmax")),
        (spectral, act("tanh"), small),
        (spectral_no_bias, small),
    ]
    if n_in == n_out:
        choices += [
            (act("tanh"), small),
            (small,),
            (act("silu"), small, Op("identity", "identity")),
        ]
    return choices


@st.composite
def solve_items(draw, space: str) -> SolveItem:
    """A solve of the cycle through ``space`` by a random solver, to a tight tolerance."""
    solver = draw(st.sampled_from(SOLVER_NAMES))
    options: list[tuple[str, float | int]] = []
    if solver == "anderson":
        if draw(st.booleans()):
            options.append(("m", draw(st.integers(1, 6))))
        if draw(st.integers(0, 3)) == 0:
            options.append(("damping", 0.9))
        if draw(st.integers(0, 3)) == 0:
            options.append(("lam", 1e-8))
    elif solver == "fixed_point" and draw(st.integers(0, 2)) == 0:
        options.append(("damping", 0.8))
    elif solver == "broyden" and draw(st.booleans()):
        options.append(("m", draw(st.integers(2, 10))))
    event(f"solver {solver}")
    return SolveItem(
        space=space,
        solver=solver,
        tol=draw(st.sampled_from([1e-10, 1e-11, 1e-12])),
        max_iter=draw(st.sampled_from([300, 500, 1000])),
        options=tuple(draw(st.permutations(options))),
        say_backward=draw(st.booleans()),
        positional=draw(st.booleans()),
    )


@st.composite
def cyclic_machines(draw, machine: str = "M", most_cycles: int = 3, most_ones: int = 3) -> Spec:
    """Random vector machines with solved cycles: blocks of spaces in dependency order, each
    one space (written by an edge of earlier blocks) or a cycle of 1..3 spaces (a ring of
    edges through them, a self edge for one, now and then one more edge among them; edges of
    a cycle also read earlier spaces and write only the cycle's spaces), 1..3 cycles each
    solved by a random solver. Edges outside a cycle write its spaces from earlier blocks (a
    constant on every iteration); later spaces and cycles read it. Now and then a cycle
    passes through an input, or is an array blk[1..k]."""
    n_cycles, n_ones = draw(st.integers(1, most_cycles)), draw(st.integers(0, most_ones))
    kinds = ["one"] + draw(st.permutations(["cycle"] * n_cycles + ["one"] * n_ones))
    n_blocks = len(kinds)
    blocks: list[list[int]] = []
    for kind in kinds:
        start = sum(map(len, blocks))
        blocks.append(list(range(start, start + (1 if kind == "one" else draw(st.integers(1, 3))))))
    n = sum(map(len, blocks))
    block_of = [b for b, positions in enumerate(blocks) for _ in positions]
    pool = SHARED_NAMES + SPACE_ONLY_NAMES + CYCLE_NAMES
    names = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique=True))
    sizes = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    role = st.integers(0, 9).map(lambda k: "input" if k < 3 else "space" if k < 8 else "output")
    on_cycle = st.sampled_from(["space"] * 6 + ["output"] * 3 + ["input"])
    roles = ["input"] + [
        draw(on_cycle if kinds[block_of[j]] == "cycle" else role) for j in range(1, n)
    ]
    roles[draw(st.integers(1, n - 1))] = "output"
    family: list[int] = []  # blk[1], blk[2], ...: the spaces of one cycle
    multi = [b for b, kind in enumerate(kinds) if kind == "cycle" and len(blocks[b]) > 1]
    if multi and draw(st.integers(0, 2)) == 0:
        family = blocks[draw(st.sampled_from(multi))]
        others = [roles[j] for j in range(n) if j not in family]
        shared_role = draw(st.sampled_from(["space", "output"]))
        if "output" not in others:
            shared_role = "output"
        for i, j in enumerate(family):
            names[j], sizes[j], roles[j] = f"{FAMILY}[{i + 1}]", sizes[family[0]], shared_role
        event("a cycle of an array of spaces")
    units = [[j] for j in range(n) if j not in family] + ([family] if family else [])
    units = draw(st.permutations(units))
    declared = [j for unit in units for j in unit]  # an array's elements one after another
    declarations = tuple(
        f"{roles[unit[0]]:<6} {FAMILY}[1..{len(unit)}] : {sizes[unit[0]]}"
        if len(unit) > 1
        else f"{roles[unit[0]]:<6} {names[unit[0]]} : {sizes[unit[0]]}"
        for unit in units
    )

    edge_pool = [e for e in draw(st.permutations(SHARED_NAMES + CYCLE_NAMES)) if e not in names]
    edge_pool += [f"g{i}" for i in range(40)]
    edges: list[Edge] = []
    small = draw(
        st.sampled_from(
            [
                Op("scale", "scale(0.05)", arg=0.05),
                Op("scale", "scale(-0.05)", arg=-0.05),
                Op("scale", "scale(factor=0.04)", arg=0.04),
            ]
        )
    )

    def add(reads: list[int], writes: list[int], choices: list[tuple[Op, ...]]) -> None:
        edges.append(
            Edge(
                name=edge_pool[len(edges)],
                reads=tuple(names[j] for j in draw(st.permutations(reads))),
                writes=tuple(names[j] for j in draw(st.permutations(writes))),
                ops=draw(st.sampled_from(choices)),
                product=draw(st.sampled_from(["×", "*"])),
                arrow=draw(st.sampled_from(["->", "->", "→"])),
            )
        )

    def n_of(positions: list[int]) -> int:
        return sum(sizes[j] for j in positions)

    def outside(b: int, targets: list[int]) -> None:
        """An edge from spaces of earlier blocks into targets (block b) and maybe a later one."""
        earlier = [j for j in range(n) if block_of[j] < b]
        reads = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True))
        previous = blocks[b - 1]
        if not set(reads) & set(previous) and draw(st.booleans()):  # chains: deep machines
            reads.append(draw(st.sampled_from(previous)))
        later = [j for j in range(n) if block_of[j] > b]
        writes = targets + (draw(st.lists(st.sampled_from(later), max_size=1)) if later else [])
        inner = draw(st.integers(1, 6))
        add(reads, writes, pipelines(n_of(reads), n_of(writes), inner))

    def others(cycle: list[int], j: int):
        """Maybe one more space of the cycle."""
        rest = [i for i in cycle if i != j]
        return st.lists(st.sampled_from(rest), max_size=1) if rest else st.just([])

    solves: list[SolveItem] = []
    for b in range(1, n_blocks):
        earlier = [j for j in range(n) if block_of[j] < b]
        if kinds[b] == "one":
            if roles[blocks[b][0]] != "input" or draw(st.booleans()):
                outside(b, blocks[b])
            continue
        cycle = blocks[b]
        ring = draw(st.permutations(cycle))
        steps = [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))]
        if draw(st.integers(0, 2)) == 0:  # one more edge among the cycle's spaces
            steps.append((draw(st.sampled_from(cycle)), draw(st.sampled_from(cycle))))
            event("a cycle with one more edge")
        for source, target in steps:
            reads = [source] + draw(others(cycle, source))
            reads += draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
            if draw(st.integers(0, 7)) == 7:
                reads.append(source)  # read twice
                event("a cycle's edge reads a space twice")
            writes = [target] + draw(others(cycle, target))
            inner = draw(st.integers(1, 6))
            add(reads, writes, cycle_pipelines(n_of(reads), n_of(writes), inner, small))
        if draw(st.booleans()):  # written from outside: a constant on every iteration
            outside(b, draw(st.lists(st.sampled_from(cycle), min_size=1, max_size=2, unique=True)))
            event("an edge outside a cycle writes its spaces")
        solves.append(draw(solve_items(names[draw(st.sampled_from(cycle))])))
        event(f"a cycle of {len(cycle)} spaces")
    for target in draw(st.lists(st.integers(1, n - 1), max_size=3)):  # more edges
        outside(block_of[target], [target])
    spec = Spec(
        name=machine,
        spaces=tuple(Space(names[j], sizes[j], roles[j]) for j in declared),
        edges=tuple(draw(st.permutations(edges))),
        declarations=declarations,
        solves=tuple(draw(st.permutations(solves))),
    )
    cycles = solved_cycles(spec)
    assert sorted(sorted(spaces) for spaces, _ in cycles) == sorted(
        sorted(names[j] for j in blocks[b]) for b in range(n_blocks) if kinds[b] == "cycle"
    )
    event(f"{len(solves)} solved cycles")
    on_cycles = {name for spaces, _ in cycles for name in spaces}
    cycle_edges = {name for _, es in cycles for name in es}
    if any(roles[j] == "input" for j in range(n) if names[j] in on_cycles):
        event("a cycle through an input")
    if any(set(e.reads) & on_cycles for e in spec.edges if e.name not in cycle_edges):
        event("an edge outside a cycle reads it")
    if any(
        set(e.reads) & (on_cycles - spaces)
        for spaces, es in cycles
        for e in spec.edges
        if e.name in es
    ):
        event("a cycle reads another cycle")
    if any(op.spectral_norm for e in spec.edges for op in e.ops):
        event("linear(spectral_norm=true)")
    return spec


@st.composite
def cyclic_cases(draw):
    """A machine with solved cycles, the spaces x0 is given on (often every space), a seed
    and a batch size."""
    spec = draw(cyclic_machines())
    names = [s.name for s in spec.spaces]
    support = draw(
        st.one_of(
            st.just(names),
            st.just(list(spec.inputs)),
            st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True),
        )
    )
    return spec, support, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3))


def test_the_cyclic_strategy_renders_what_it_draws() -> None:
    """A fixed machine with two solved cycles through the renderer and the oracle: a self
    edge with a normalised weight, and an array of two spaces written from outside."""
    x, z, y = Space("x", 3, "input"), Space("z", 2, "space"), Space("y", 2, "output")
    blk = (Space("blk[1]", 2, "space"), Space("blk[2]", 2, "space"))
    spectral = Op("linear", "linear(spectral_norm=true)", spectral_norm=True)
    small = Op("scale", "scale(0.05)", arg=0.05)
    tanh = Op("tanh", "tanh")
    edges = (
        Edge("cell", ("z", "x"), ("z",), (linear(), tanh)),
        Edge("norm", ("z",), ("z",), (spectral, tanh, small)),
        Edge("up", ("blk[1]", "z"), ("blk[2]",), (linear(), tanh)),
        Edge("down", ("blk[2]",), ("blk[1]",), (linear(bias=False),)),
        Edge("feed", ("x",), ("blk[1]", "y"), (linear(),)),
        Edge("head", ("blk[2]",), ("y",), (linear(),)),
    )
    decls = ("input  x : 3", "space  z : 2", "space  blk[1..2] : 2", "output y : 2")
    solves = (
        SolveItem("z", "anderson", 1e-12, 200, options=(("m", 3),)),
        SolveItem("blk[2]", "broyden", 1e-11, 100, backward="implicit", positional=True),
    )
    spec = Spec("M", (x, z, *blk, y), edges, decls, solves=solves)
    assert spec.render().splitlines()[-3:] == [
        "    solve z with anderson(tol=1e-12, max_iter=200, m=3)",
        "    solve blk[2] with broyden(1e-11, 100)",
        "}",
    ]
    assert sorted(sorted(spaces) for spaces, _ in solved_cycles(spec)) == [
        ["blk[1]", "blk[2]"],
        ["z"],
    ]
    cls = load_classes(spec.render(), "fixed_cycles.mach")["M"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        check_against_definition(cls, spec, 0, 2, ["x", "z", "blk[2]"])


@settings(
    max_examples=30,
    derandomize=True,  # solvers to 1e-10: the same machines every run
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cyclic_cases())
def test_random_machines_with_solved_cycles_follow_the_machine_equation(case) -> None:
    """Cycles solved by each solver: f, the resolvent (x0 also on the cycles' spaces) against
    the naive iteration run until it settles, the machine equation, forward, gradients of
    parameters and x0 (implicit backward), the adjoint machine; every solve converges."""
    spec, support, seed, batch = case
    source = spec.render()
    note(source)
    note(f"x0 given on {support}, seed {seed}, batch {batch}")
    cls = load_classes(source, "random_cycles.mach")[spec.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a solve that did not converge
        check_against_definition(cls, spec, seed, batch, support)


@settings(max_examples=20, derandomize=True, deadline=None, report_multiple_bugs=False)
@given(spec=cyclic_machines(), data=st.data())
def test_an_edge_of_a_cycle_writing_outside_it_is_e020(spec: Spec, data) -> None:
    """An edge of a cycle that also writes a space the cycle does not reach back from (one
    no edge reads, made for it) leaves the cycle as it was: E020, not a bigger cycle."""
    spaces, edges = data.draw(st.sampled_from(solved_cycles(spec)))
    edge = data.draw(st.sampled_from([e for e in spec.edges if e.name in edges]))
    size = sum(spec.shape[w][0] for w in edge.writes) + 2
    widened = replace(edge, writes=(*edge.writes, "spill"), ops=(linear(out=size),))
    source = replace(
        spec,
        spaces=(*spec.spaces, Space("spill", 2, "output")),
        edges=tuple(widened if e is edge else e for e in spec.edges),
        declarations=(*spec.declarations, "output spill : 2"),
    ).render()
    note(source)
    with pytest.raises(machc.CompileError) as info:
        machc.check_source(source, "spill.mach")
    assert [d.code.value for d in info.value.errors] == ["E020"], str(info.value)
    message = info.value.errors[0].message
    assert f"edge {edge.name!r}" in message and "'spill', outside the cycle" in message, message


@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cyclic_cases())
def test_implicit_and_unrolled_backward_give_the_same_gradients(case) -> None:
    """The same machine with every solve given backward=unrolled (autograd through the
    solver's iterations) and its weights: the same outputs, and the same gradients of the
    parameters and of x0 through resolvent and forward as the implicit backward's."""
    spec, support, seed, batch = case
    unrolled = replace(spec, solves=tuple(replace(s, backward="unrolled") for s in spec.solves))
    note(spec.render())
    note(unrolled.render())
    note(f"x0 given on {support}, seed {seed}, batch {batch}")
    models = []
    for variant in (spec, unrolled):
        model = load_classes(variant.render(), "random_backward.mach")[spec.name]()
        check_layers(model, variant)  # the Solve modules: backward="unrolled" in the second
        models.append(model.double().eval())
    implicit, through_iterations = models
    randomize(implicit, torch.Generator().manual_seed(seed))
    contract(implicit, spec)
    through_iterations.load_state_dict(implicit.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)

    def rand(name: str) -> torch.Tensor:
        return torch.randn(batch, *spec.shape[name], generator=gen, dtype=torch.float64)

    x0 = {name: rand(name) for name in support}
    inputs = [rand(name) for name in spec.inputs]
    weights = {s.name: rand(s.name) for s in spec.spaces}

    def run(model: nn.Module) -> tuple:
        """resolvent and forward, and the gradients of the parameters and of x0 (of the
        inputs) through each."""
        leaves = {name: t.clone().requires_grad_() for name, t in x0.items()}
        ins = [t.clone().requires_grad_() for t in inputs]
        params = list(model.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a solve that did not converge
            state = model.resolvent(leaves)
            outputs = as_outputs(spec, model(*ins))
            loss = sum((weights[name] * t).sum() for name, t in state.items())
            by_resolvent = torch.autograd.grad(loss, [*params, *leaves.values()], allow_unused=True)
            loss = sum((weights[name] * t).sum() for name, t in outputs.items())
            by_forward = torch.autograd.grad(loss, [*params, *ins], allow_unused=True)
        state = {name: t.detach() for name, t in state.items()}
        outputs = {name: t.detach() for name, t in outputs.items()}
        return state, outputs, by_resolvent, by_forward

    state, outputs, by_resolvent, by_forward = run(implicit)
    state_u, outputs_u, by_resolvent_u, by_forward_u = run(through_iterations)
    assert_states_close(state_u, state, "unrolled resolvent", RTOL_CYCLE, ATOL_CYCLE)
    assert_states_close(outputs_u, outputs, "unrolled forward", RTOL_CYCLE, ATOL_CYCLE)
    params = [name for name, _ in implicit.named_parameters()]
    labels = [*params, *(f"x0[{name}]" for name in x0)]
    tolerances = (RTOL_UNROLLED, ATOL_UNROLLED)
    assert_grads_close(by_resolvent_u, by_resolvent, labels, "unrolled resolvent", *tolerances)
    labels = [*params, *spec.inputs]
    assert_grads_close(by_forward_u, by_forward, labels, "unrolled forward", *tolerances)
