"""Concatenations that autograd does not keep: the rewrite ``regroup`` (docs/performance.md).

An edge ``g : x × h1 × h2 -> y = linear | relu`` computes ``relu(g(cat(x, h1, h2)))``,
and autograd keeps the concatenation for the backward of ``g``: a machine where every
block reads all earlier ones (a DenseNet) keeps memory quadratic in its depth, though
each block's own output is kept anyway. Where the compiler rewrites such an edge,
generated ``forward`` calls :func:`regroup` instead::

    h[i] = torch.relu(runtime.regroup(self.g[str(i)], [x, *[h[j] for j in range(1, i)]]))

It computes the same thing with the same kernels (outputs and gradients are bitwise
those of the plain form), but what the backward needs of the concatenation is kept as
its parts, which are kept anyway, and concatenated again when the backward runs. The
ops ``prefix`` between the concatenation and the layer (a DenseNet-BC block's
``batchnorm | relu | conv``) are run again in the backward too, instead of being kept
(a batchnorm from the batch statistics the forward computed: one pass, not three):
memory linear in the depth for one more concatenation and a few cheap ops per edge.

Where that cannot work or helps nothing, :func:`regroup` is exactly the plain form:
without gradients, while ``torch.compile``, ``torch.export`` or TorchScript trace, inside
``torch.func`` transforms, and inside the user's own saved-tensor hooks
(``torch.utils.checkpoint``, ``torch.autograd.graph.save_on_cpu``), which come first.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn

Op = Callable[[Tensor], Tensor]

__all__ = ["Columns", "regroup"]


def regroup(
    layer: Op,
    parts: Sequence[Tensor],
    prefix: Sequence[Op] = (),
    shared: Columns | None = None,
    width: int = 0,
) -> Tensor:
    """``layer(prefix(torch.cat(parts, dim=1)))``, keeping ``parts`` for the backward
    instead of the concatenation and what ``prefix`` makes of it (each op of ``prefix``
    is applied in turn; a module among them runs again as it ran: in the same mode, with
    its buffers, a batchnorm's running statistics, put back after).

    An ``nn.Linear`` on 2-D parts, given the concatenations ``shared`` of this forward
    (and ``width``, the widest concatenation of the edges like it), is computed on a
    buffer they share: an edge whose parts begin with those of an earlier edge appends
    only the rest to its buffer, and the backward reads the buffer. Appending is linear
    in the depth of a dense block where concatenating is quadratic, in memory and in
    time.

    The backward refuses, as autograd does, what would give wrong gradients: a part, a
    parameter or a buffer it needs that was changed in place after the forward.
    """
    if not _keeps_parts(parts):
        x = torch.cat(parts, dim=1)
        for op in prefix:
            x = op(x)
        return layer(x)
    if shared is not None and not prefix and _on_columns(layer, parts):
        buffer = shared.holding(parts, width)
        return _LinearOnColumns.apply(buffer, layer.weight, layer.bias, *parts)
    kept = _Kept(tuple(parts), tuple(prefix))
    with torch.autograd.graph.saved_tensors_hooks(kept.pack, kept.unpack):
        x = torch.cat(kept.parts, dim=1)
        stages = [x]
        for op in prefix:
            x = op(x)
            stages.append(x)
        out = layer(x)
        kept.note_statistics(stages)
    kept.settle(stages)
    return out


def _keeps_parts(parts: Sequence[Tensor]) -> bool:
    """Whether saved-tensor hooks of ours may run here (else: the plain form)."""
    if not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
        return False
    hooks = torch._C._autograd
    if not hooks._saved_tensors_hooks_is_enabled():  # torch.func's grad and vjp
        return False
    if hooks._top_saved_tensors_default_hooks(False) is not None:  # the user's come first
        return False
    if forward_ad._current_level >= 0:  # forward-mode AD: dual tensors
        return False
    # plain tensors only: not FX proxies, vmap's or jvp's wrappers, or subclasses
    return all(
        type(p) is Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(p) for p in parts
    )


class _Slot:
    """What a saved tensor of the edge is kept as: itself (with its version, as autograd
    checks it), or a stage to make again."""

    __slots__ = ("tensor", "version", "stage")

    def __init__(self, tensor: Tensor):
        self.tensor: Tensor | None = tensor
        # checked as autograd checks it: parameters and activations, not buffers
        self.version = tensor._version if tensor.requires_grad else None
        self.stage: int | None = None


class _Kept:
    """The parts, the prefix as it ran, and every tensor the edge's ops saved.

    A tensor is saved (``pack``) while its op runs, before it is known which stage it is
    (an op may save its own result); ``settle`` then replaces each saved stage by its
    number. The backward asks for each saved tensor (``unpack``): a stage is made again
    from the parts, once for all the ops that saved it.
    """

    def __init__(self, parts: tuple[Tensor, ...], prefix: tuple[Op, ...]):
        self.parts = parts
        self.prefix = prefix
        self.slots: list[_Slot] = []
        self.uses: dict[int, int] = {}  # stage -> unpacks still to come
        self.made: dict[int, Tensor] = {}
        # what the prefix ran with, to run it again so: modes, autocast, versions of the
        # parts and of the buffers an eval-mode module reads (running statistics)
        self.modes = [op.training if isinstance(op, nn.Module) else None for op in prefix]
        device = parts[0].device.type
        self.autocast = (device, torch.is_autocast_enabled(device), _autocast_dtype(device))
        self.versions: list[tuple[Tensor, int]] = []
        # stage -> (mean, invstd, eps) of a batch norm that made it from batch statistics
        self.statistics: dict[int, tuple[Tensor, Tensor, float]] = {}

    def pack(self, tensor: Tensor) -> _Slot:
        slot = _Slot(tensor)
        self.slots.append(slot)
        return slot

    def note_statistics(self, stages: list[Tensor]) -> None:
        """The batch statistics each batch norm of the prefix computed, where the backward
        can make its stage again from them (see :func:`_normalized`)."""
        if self.autocast[1]:
            return
        for k, op in enumerate(self.prefix, 1):
            x, node = stages[k - 1], stages[k].grad_fn
            if (
                type(op) in _BATCH_NORMS
                and type(node).__name__ == "NativeBatchNormBackward0"
                and node._saved_training
                and not _module_hooks(op)
                and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64)
                and (op.weight is None or op.weight.dtype == x.dtype)
            ):
                mean, invstd = node._saved_result1, node._saved_result2
                self.statistics[k] = (mean, invstd, node._saved_eps)

    def settle(self, stages: list[Tensor]) -> None:
        keys = {_key(t): j for j, t in enumerate(stages)}
        keys.pop(None, None)
        for slot in self.slots:
            j = keys.get(_key(slot.tensor))
            if j is not None:
                slot.tensor, slot.stage = None, j
                self.uses[j] = self.uses.get(j, 0) + 1
        self.slots = []
        if self.uses:  # stages will be made again: from what, as it is now
            self.versions = [(p, p._version) for p in self.parts]
            for op, training in zip(self.prefix, self.modes, strict=True):
                if training is False:
                    self.versions += [
                        (b, b._version) for b in op.buffers() if b.is_floating_point()
                    ]

    def unpack(self, slot: _Slot) -> Tensor:
        if slot.stage is None:
            if slot.version is not None:
                _check_version(slot.tensor, slot.version)
            return slot.tensor
        j = slot.stage
        if j not in self.made:
            self._make(j)
        x = self.made[j]
        self.uses[j] = self.uses.get(j, 0) - 1
        if self.uses[j] <= 0:  # the last op that needs it: not kept longer (a second
            del self.made[j]  # backward, retain_graph=True, makes it again)
        return x

    def _make(self, stage: int) -> None:
        """Stage ``stage`` made again into ``made``, and on the way every earlier stage
        that ops will still ask for (the backward of the prefix comes right after)."""
        for tensor, version in self.versions:
            _check_version(tensor, version)
        # NOTE: under the backward's grad mode: with create_graph=True the stage is made
        # with its graph, so that a double backward reaches the parts
        with _autocast(*self.autocast):
            x = torch.cat(self.parts, dim=1)
            for k in range(stage + 1):
                if k:
                    x = self._again(k, x)
                if k == stage or self.uses.get(k, 0) > 0:
                    self.made[k] = x

    def _again(self, k: int, x: Tensor) -> Tensor:
        """Stage ``k`` made again from stage ``k - 1``, ``x``, which ``_make`` made."""
        op, training = self.prefix[k - 1], self.modes[k - 1]
        if not torch.is_grad_enabled():  # a backward that is not differentiated itself
            known = self.statistics.get(k)
            made = _normalized(op, x, *known) if known is not None else None
            if made is not None:
                return made
            in_place = _in_place(op)
            if in_place is not None and self.uses.get(k - 1, 0) <= 0:
                return in_place(x)  # nothing asks for x: overwritten
        return op(x) if training is None else _as_it_ran(op, training, x)


def _as_it_ran(module: nn.Module, training: bool, x: Tensor) -> Tensor:
    """``module(x)`` in the mode it ran in the forward, on copies of its buffers: what it
    would write there (running statistics) is dropped, and the buffers themselves, which
    the backward may read, stay untouched."""
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    mode = module.training
    module.training = training
    try:
        return torch.func.functional_call(module, buffers, (x,), strict=False)
    finally:
        module.training = mode


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# activations the backward runs in place on a stage it made and no op asks for (the
# same kernel: the same numbers, one tensor fewer)
_IN_PLACE = {torch.relu: torch.relu_, torch.tanh: torch.tanh_, torch.sigmoid: torch.sigmoid_}


def _in_place(op: Op) -> Op | None:
    """The in-place form of ``op`` (a torch function, not any callable: modules and
    user-defined callables run as they are)."""
    return _IN_PLACE.get(op) if type(op) is type(torch.relu) else None


def _normalized(
    module: nn.Module, x: Tensor, mean: Tensor, invstd: Tensor, eps: float
) -> Tensor | None:
    """What the batch norm ``module`` made of ``x`` in the forward from the batch statistics
    ``mean`` and ``invstd`` it computed then, made without computing them again: bitwise.

    PyTorch's CPU kernel computes ``x * alpha + beta`` per channel, with ``alpha = invstd *
    weight`` and ``beta = bias - mean * alpha``, and only ``invstd`` comes differently in
    evaluation mode: ``1 / sqrt(running_var + eps)``. Evaluation mode with a running
    variance for which that is exactly 1 and ``alpha`` as the weight computes the same
    numbers with the same code (the statistics pass, two of the kernel's three passes over
    ``x``, is what this saves)."""
    unit = _unit_variance(x.shape[1], x.dtype, eps)
    if unit is None:  # no such variance in this arithmetic: the module runs again
        return None
    weight = module.weight
    alpha = invstd * weight if weight is not None else invstd
    return nn.functional.batch_norm(x, mean, unit, alpha, module.bias, False, 0.0, eps)


@functools.lru_cache(maxsize=64)
def _unit_variance(channels: int, dtype: torch.dtype, eps: float) -> Tensor | None:
    """A running variance ``v`` for which batch norm's ``1 / sqrt(v + eps)`` is exactly 1
    (checked with the kernel itself), or None."""
    v = torch.full((channels,), 1.0 - eps, dtype=dtype)
    probe = torch.ones(1, channels, dtype=dtype)
    got = nn.functional.batch_norm(probe, torch.zeros_like(v), v, None, None, False, 0.0, eps)
    return v if bool((got == 1).all()) else None


def _check_version(tensor: Tensor, version: int) -> None:
    if tensor._version != version:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: a {type(tensor).__name__} of shape {list(tensor.shape)} that "
            f"runtime.regroup kept is at version {tensor._version}; expected version "
            f"{version} instead (a space an edge concatenates, a parameter or a buffer it "
            "reads must not change before the backward; machc compile --no-regroup keeps "
            "the concatenation itself, as plain PyTorch does)"
        )


def _autocast(device: str, enabled: bool, dtype: torch.dtype):
    """Autocast as the forward ran it (nothing for a device autocast does not know)."""
    try:
        return torch.autocast(device, dtype=dtype, enabled=enabled)
    except RuntimeError:
        return contextlib.nullcontext()


def _autocast_dtype(device: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device)
    except RuntimeError:  # a device autocast does not know
        return torch.get_autocast_dtype("cpu")


def _key(t: Tensor | None):
    """Where a tensor's numbers are (None where that cannot be known: a tensor without
    storage is then kept as it is)."""
    if t is None:
        return None
    try:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
    except (RuntimeError, NotImplementedError):
        return None


# -- a linear layer on 2-D spaces: the concatenations of one forward share buffers --
#
# ``g[i] : x × h[1..i-1] -> h[i] = linear | relu`` concatenates x, h[1], ..., h[i-1] for
# every i: copies quadratic in the depth, in time as in memory. Here the edges of one
# forward append their new spaces to one buffer of columns, and each linear reads its
# first columns, a view (BLAS reads a matrix with a row stride of its own: no copy).
# The backward computes exactly what addmm's computes (the same kernels on the same
# numbers: bitwise), reading the buffer where addmm's reads the concatenation it kept.


class Columns:
    """The concatenations the regrouped linear edges of one call of ``forward`` share
    (generated ``forward`` makes one and gives it to each such :func:`regroup`)."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[_Buffer] = []

    def holding(self, parts: Sequence[Tensor], width: int) -> _Buffer:
        """A buffer whose first columns are ``torch.cat(parts, dim=1)``: the one whose
        parts ``parts`` begins with, unchanged, with the rest appended, or a new one with
        room for ``width`` columns (or, where ``parts`` are wider, for twice them)."""
        for buffer in reversed(self.buffers):  # the latest first: a dense block's own
            if buffer.extended_by(parts):
                return buffer
        first = parts[0]
        need = sum(p.shape[1] for p in parts)
        buffer = _Buffer(first.new_empty(first.shape[0], width if width >= need else 2 * need))
        buffer.append(parts)
        self.buffers.append(buffer)
        return buffer


def _on_columns(layer: Op, parts: Sequence[Tensor]) -> bool:
    """Whether ``layer(torch.cat(parts, dim=1))`` is addmm on a shared buffer here."""
    if type(layer) is not nn.Linear or _module_hooks(layer):
        return False
    weight = layer.weight
    if type(weight) not in (nn.Parameter, Tensor) or weight.dim() != 2:
        return False
    device = weight.device
    if torch.is_autocast_enabled(device.type):
        return False
    rows = parts[0].shape[0]
    return rows > 0 and all(
        p.dim() == 2 and p.shape[0] == rows and p.dtype == weight.dtype and p.device == device
        for p in parts
    )


def _module_hooks(layer: nn.Module) -> bool:
    """Hooks that calling the module would run (then it is called)."""
    module = nn.modules.module
    return bool(
        layer._forward_hooks
        or layer._forward_pre_hooks
        or layer._backward_hooks
        or layer._backward_pre_hooks
        or module._global_forward_hooks
        or module._global_forward_pre_hooks
        or module._global_backward_hooks
        or module._global_backward_pre_hooks
    )


class _Buffer:
    """A tensor of columns whose first ``width`` hold the concatenation of ``parts``
    (with the versions they had when copied). Columns are only ever appended: the first
    columns an edge read stay as they were until its backward."""

    __slots__ = ("tensor", "parts", "width")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.parts: list[tuple[Tensor, int]] = []
        self.width = 0

    def extended_by(self, parts: Sequence[Tensor]) -> bool:
        """Whether ``parts`` begins with this buffer's parts, unchanged, and the rest fits
        (then they are appended)."""
        held, tensor, first = self.parts, self.tensor, parts[0]
        if len(held) > len(parts) or tensor.dtype != first.dtype or tensor.device != first.device:
            return False
        if tensor.shape[0] != first.shape[0]:
            return False
        for (kept, version), part in zip(held, parts[: len(held)], strict=True):
            if kept is not part or part._version != version:
                return False
        new = parts[len(held) :]
        if self.width + sum(p.shape[1] for p in new) > tensor.shape[1]:
            return False
        self.append(new)
        return True

    def append(self, parts: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for part in parts:
                w = part.shape[1]
                self.tensor.narrow(1, self.width, w).copy_(part)
                self.width += w
                self.parts.append((part, part._version))


class _LinearOnColumns(torch.autograd.Function):
    """``F.linear(torch.cat(parts, dim=1), weight, bias)`` on the first columns of
    ``buffer``: addmm's forward and backward, reading the buffer."""

    @staticmethod
    def forward(ctx, buffer: _Buffer, weight: Tensor, bias: Tensor | None, *parts: Tensor):
        width = sum(p.shape[1] for p in parts)
        x = buffer.tensor.narrow(1, 0, width)
        out = torch.addmm(bias, x, weight.t()) if bias is not None else x.mm(weight.t())
        ctx.save_for_backward(weight)
        ctx.x, ctx.bias = x, bias
        ctx.sizes = [p.shape[1] for p in parts]
        ctx.parts = [(p, p._version) for p in parts]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the backward with its graph
            return _linear_backward_with_graph(ctx, weight, grad)
        wants = ctx.needs_input_grad
        # as addmm's backward computes them (mm_mat1_backward, mm_mat2_backward of a
        # column-major weight.t(), the bias summed to its shape)
        grad_weight = grad.t().mm(ctx.x) if wants[1] else None
        grad_bias = grad.sum_to_size(ctx.bias.shape) if wants[2] else None
        grad_parts = [None] * len(ctx.sizes)
        if any(wants[3:]):
            grad_parts = list(grad.mm(weight).split(ctx.sizes, dim=1))
        return (None, grad_weight, grad_bias, *grad_parts)


def _linear_backward_with_graph(ctx, weight: Tensor, grad: Tensor):
    """A backward that can be differentiated again (a gradient penalty): the
    concatenation made again from the parts, with their graph. (Each input through an
    alias of its own: a part may depend on another, and only the paths through this
    edge's layer count here.)"""
    for part, version in ctx.parts:
        _check_version(part, version)
    inputs = [weight, ctx.bias, *(p for p, _ in ctx.parts)]
    inputs = [t.view_as(t) if t is not None else None for t in inputs]
    weight, bias, *parts = inputs
    wants = [t is not None and w for t, w in zip(inputs, ctx.needs_input_grad[1:], strict=True)]
    out = nn.functional.linear(torch.cat(parts, dim=1), weight, bias)
    taken = [t for t, w in zip(inputs, wants, strict=True) if w]
    found = iter(torch.autograd.grad(out, taken, grad, create_graph=True, allow_unused=True))
    return (None, *(next(found) if w else None for w in wants))
