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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Op = Callable[[Tensor], Tensor]

__all__ = ["regroup"]


def regroup(layer: Op, parts: Sequence[Tensor], prefix: Sequence[Op] = ()) -> Tensor:
    """``layer(prefix(torch.cat(parts, dim=1)))``, keeping ``parts`` for the backward
    instead of the concatenation and what ``prefix`` makes of it (each op of ``prefix``
    is applied in turn; a module among them has its buffers, a batchnorm's running
    statistics, restored after it runs again)."""
    if not _keeps_parts():
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


def _keeps_parts() -> bool:
    """Whether saved-tensor hooks of ours may run here (else: the plain form)."""
    if not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    hooks = torch._C._autograd
    if not hooks._saved_tensors_hooks_is_enabled():  # torch.func transforms turn them off
        return False
    return hooks._top_saved_tensors_default_hooks(False) is None  # the user's come first


class _Slot:
    """What a saved tensor of the edge is kept as: itself, or a stage to make again."""

    __slots__ = ("tensor", "stage")

    def __init__(self, tensor: Tensor):
        self.tensor: Tensor | None = tensor
        self.stage: int | None = None


class _Kept:
    """The parts, the prefix, and every tensor the edge's ops saved.

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

    def pack(self, tensor: Tensor) -> _Slot:
        slot = _Slot(tensor)
        self.slots.append(slot)
        return slot

    def settle(self, stages: list[Tensor]) -> None:
        keys = {_key(t): j for j, t in enumerate(stages)}
        for slot in self.slots:
            j = keys.get(_key(slot.tensor))
            if j is not None:
                slot.tensor, slot.stage = None, j
                self.uses[j] = self.uses.get(j, 0) + 1
        self.slots = []

    def unpack(self, slot: _Slot) -> Tensor:
        if slot.stage is None:
            return slot.tensor
        j = slot.stage
        x = self.made.get(j)
        if x is None:
            x = self._make(j)
        self.uses[j] = self.uses.get(j, 0) - 1
        if self.uses[j] > 0:
            self.made[j] = x
        else:  # the last op that needs it: not kept longer (a second backward makes it again)
            self.made.pop(j, None)
        return x

    def _make(self, stage: int) -> Tensor:
        # NOTE: under the backward's grad mode: with create_graph=True the stage is made
        # with its graph, so that a double backward reaches the parts
        x = torch.cat(self.parts, dim=1)
        for op in self.prefix[:stage]:
            if isinstance(op, nn.Module):
                x = _without_updates(op, x)
            else:
                x = op(x)
        return x


def _without_updates(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with its buffers (running statistics) as they were before."""
    buffers = [(b, b.clone()) for b in module.buffers()]
    y = module(x)
    with torch.no_grad():
        for b, before in buffers:
            b.copy_(before)
    return y


def _key(t: Tensor | None):
    if t is None:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
