"""machc: compile .mach hypergraph machines into PyTorch modules.

The public API (``compile_source``, ``compile_file``, ``load``, ``check_source``,
``check_file``, ``CompileError``, ``MachcWarning``) is imported lazily, so that
``machc.runtime`` can be imported by generated code without loading the compiler.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "CompileError",
    "MachcWarning",
    "__version__",
    "check_file",
    "check_source",
    "compile_file",
    "compile_source",
    "load",
]


def __getattr__(name: str):
    if name in (
        "compile_source",
        "compile_file",
        "load",
        "check_source",
        "check_file",
        "MachcWarning",
    ):
        from . import driver

        return getattr(driver, name)
    if name == "CompileError":
        from .diagnostics import CompileError

        return CompileError
    raise AttributeError(f"module 'machc' has no attribute {name!r}")
