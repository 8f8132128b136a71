"""Checkpoints across the two layouts of a loop's layers (docs/integration.md, "Checkpoints").

A ``for`` loop kept as a loop holds the layers of its edges in an ``nn.ModuleDict``
keyed by index (``g.3.weight``); written out edge by edge (``machc compile
--expand-loops``, a loop that is not kept, or machc before loops were kept) each edge has
an attribute of its own (``g_3.weight``). Generated ``__init__`` registers a
:class:`LoopCheckpoints` as a ``load_state_dict`` pre-hook, so that a checkpoint saved in
either layout loads into a module of the other: its keys are renamed, nothing else.
"""

from __future__ import annotations

from torch import nn

__all__ = ["LoopCheckpoints"]


class LoopCheckpoints:
    """A ``load_state_dict`` pre-hook that renames the keys of loops' layers saved in the
    other layout. ``loops``: each loop statement's ``ModuleDict`` attribute (kept layout)
    -> the prefix of its edges' attributes written out (``g`` for ``g_3``); ``kept``:
    whether this module keeps the loops (else it writes them out). A key is renamed only
    where the module has no attribute of the key's own name and the renamed key is not in
    the checkpoint already."""

    def __init__(self, kept: bool, loops: dict[str, str]):
        self.kept = kept
        self.loops = dict(loops)

    def __call__(
        self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ) -> None:
        renames = {}
        for key in state_dict:
            if not key.startswith(prefix):
                continue
            head, dot, rest = key[len(prefix) :].partition(".")
            if not dot:
                continue
            other = self._other(module, head, rest)
            if other is not None and prefix + other not in state_dict:
                renames[key] = prefix + other
        for old, new in renames.items():
            state_dict[new] = state_dict.pop(old)

    def _other(self, module: nn.Module, head: str, rest: str) -> str | None:
        """The key ``head.rest`` has in this module's layout, if it is a loop's layer saved
        in the other."""
        if hasattr(module, head):
            return None  # the module's own attribute: the key is in its layout
        if self.kept:  # g_3.weight -> g.3.weight
            for attr, written in self.loops.items():
                if head.startswith(written + "_"):
                    key = _key(head[len(written) + 1 :])
                    layers = getattr(module, attr, None)
                    if key is not None and isinstance(layers, nn.ModuleDict) and key in layers:
                        return f"{attr}.{key}.{rest}"
            return None
        written = self.loops.get(head)  # g.3.weight -> g_3.weight
        key, dot, inner = rest.partition(".")
        if written is None or not dot or _written(key) is None:
            return None
        name = f"{written}_{_written(key)}"
        return f"{name}.{inner}" if hasattr(module, name) else None


def _written(key: str) -> str | None:
    """How an attribute written out spells a ModuleDict key (``3``, ``m1`` for ``-1``), or
    None for a key that is no index machc writes."""
    digits = key.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or str(int(digits)) != digits:
        return None
    return None if key == "-0" else key.replace("-", "m")


def _key(written: str) -> str | None:
    """The ModuleDict key a written-out index spells (``3``; ``-1`` for ``m1``), or None."""
    key = written.replace("m", "-", 1) if written.startswith("m") else written
    return key if _written(key) == written else None
