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
``batchnorm | relu | conv``) are run again in the backward too, instead of being kept:
memory linear in the depth for one more concatenation and a few cheap ops per edge.

Where that cannot work or helps nothing, :func:`regroup` is exactly the plain form:
without gradients, while ``torch.compile``, ``torch.export`` or TorchScript trace, inside
``torch.func`` transforms, and inside the user's own saved-tensor hooks
(``torch.utils.checkpoint``, ``torch.autograd.graph.save_on_cpu``), which come first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn

Op = Callable[[Tensor], Tensor]

__all__ = ["regroup"]


def regroup(layer: Op, parts: Sequence[Tensor], prefix: Sequence[Op] = ()) -> Tensor:
    """``layer(prefix(torch.cat(parts, dim=1)))``, keeping ``parts`` for the backward
    instead of the concatenation and what ``prefix`` makes of it (each op of ``prefix``
    is applied in turn; a module among them runs again as it ran: in the same mode, with
    its buffers, a batchnorm's running statistics, put back after).

    The backward refuses, as autograd does, what would give wrong gradients: a part, a
    parameter or a buffer it needs that was changed in place after the forward.
    """
    if not _keeps_parts(parts):
        x = torch.cat(parts, dim=1)
        for op in prefix:
            x = op(x)
        return layer(x)
    kept = _Kept(tuple(parts), tuple(prefix))
    with torch.autograd.graph.saved_tensors_hooks(kept.pack, kept.unpack):
        x = torch.cat(kept.parts, dim=1)
        stages = [x]
        for op in prefix:
            x = op(x)
            stages.append(x)
        out = layer(x)
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

    def pack(self, tensor: Tensor) -> _Slot:
        slot = _Slot(tensor)
        self.slots.append(slot)
        return slot

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
                    op, training = self.prefix[k - 1], self.modes[k - 1]
                    x = op(x) if training is None else _as_it_ran(op, training, x)
                if k == stage or self.uses.get(k, 0) > 0:
                    self.made[k] = x


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
