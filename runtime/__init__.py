"""machc.runtime: the support library of generated code.

Torch only: it never imports the compiler. Generated modules import it only
where they need it (the ``module("package.module.Class", ...)`` op, which
builds a user's own ``nn.Module`` and checks the shape it returns).
"""

from __future__ import annotations

import importlib

from torch import Tensor, nn

__all__ = ["MachineShapeError", "check_shape", "external"]


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
    except ImportError as exc:
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
