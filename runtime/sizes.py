"""Sizes known only at call time: a machine declared ``input img : [3, H, W]`` binds
``H`` and ``W`` from the tensors it is given, checks everything else about their
shapes, and checks the relations between sizes that its edges need.
"""

from __future__ import annotations

from torch import Tensor, nn


class SizeError(ValueError):
    """A machine got inputs whose sizes it cannot take: a wrong rank, a wrong fixed size,
    one symbol bound to two sizes, a size below the smallest, or a broken relation."""


def bind_sizes(module: nn.Module, given: dict[str, Tensor], /, **smallest: int) -> tuple:
    """The sizes of the symbols (in the order of ``smallest``) that the given tensors
    bind, from the shapes ``module.SPACES`` declares; a :class:`SizeError` for any
    tensor whose shape does not fit."""
    machine = type(module).__name__
    spaces = module.SPACES
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    for name, value in given.items():
        shape = spaces.get(name)
        if shape is None or not isinstance(value, Tensor):
            continue  # _complete reports unknown names; forward's arguments are tensors
        want = "[" + ", ".join(["batch", *map(str, shape)]) + "]"
        if value.dim() != len(shape) + 1:
            raise SizeError(
                f"{machine}: {name!r} must be a tensor {want}, got shape {list(value.shape)} "
                f"({value.dim()} axes, not {len(shape) + 1})"
            )
        for axis, (n, size) in enumerate(zip(shape, value.shape[1:], strict=True), 1):
            if isinstance(n, int):
                if size != n:
                    raise SizeError(
                        f"{machine}: {name!r} must be a tensor {want}, got shape "
                        f"{list(value.shape)} (axis {axis} is {size}, not {n})"
                    )
            elif n.isidentifier():
                if n not in sizes:
                    sizes[n], where[n] = size, f"{name!r} axis {axis}"
                elif sizes[n] != size:
                    raise SizeError(
                        f"{machine}: {n} is {sizes[n]} by {where[n]} but {size} by {name!r} "
                        f"axis {axis} (shape {list(value.shape)}, declared {want})"
                    )
    missing = [n for n in smallest if n not in sizes]
    if missing:
        raise SizeError(
            f"{machine}: the sizes {', '.join(missing)} are not known: give the inputs that "
            "have them ({})".format(
                ", ".join(
                    f"{k} [{', '.join(map(str, v))}]"
                    for k, v in spaces.items()
                    if set(missing) & set(v)
                )
            )
        )
    for n, least in smallest.items():
        if sizes[n] < least:
            raise SizeError(
                f"{machine}: {n} = {sizes[n]} (from {where[n]}) is too small: with {n} < "
                f"{least} some space of the machine would have no positions"
            )
    return tuple(sizes[n] for n in smallest)


def check_size(holds: bool, module: nn.Module, needs: str, /, **sizes: int) -> None:
    """A :class:`SizeError` unless ``holds``: the relation ``needs`` (text) for ``sizes``."""
    if not holds:
        values = ", ".join(f"{k} = {v}" for k, v in sizes.items())
        raise SizeError(f"{type(module).__name__}: {needs}, which does not hold for {values}")
