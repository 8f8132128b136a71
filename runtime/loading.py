"""Modules that ``machc.load`` compiles in memory, and how their models travel.

``machc.load`` writes no file: it executes the generated source as a module
named after the source file and a hash of the generated code. A model of such
a module pickles (``torch.save(model)``, ``copy.deepcopy``, the pickling of
``multiprocessing`` and ``torch.multiprocessing``) with that source, so that
unpickling it in another process executes the same module there first: it needs
``machc`` installed (this runtime, not the compiler) and nothing else.
"""

from __future__ import annotations

import hashlib
import linecache
import sys
import types

from torch import nn

SOURCE_ATTRIBUTE = "__machc_source__"


def module_name(stem: str, source: str) -> str:
    """The module name of a generated source: the same source gets the same name anywhere."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    return f"machc_generated_{stem}_{digest}"


def file_label(path: str, name: str) -> str:
    """The file name tracebacks, debuggers and TorchScript read a module's source under:
    ``<machc:PATH#HASH>``, one per generated code (two parameter sets of one file are two
    sources; sharing a name, TorchScript would compile one's forward for the other)."""
    return f"<machc:{path}#{name.rsplit('_', 1)[-1]}>"


def module_from_source(name: str, filename: str, source: str) -> types.ModuleType:
    """The module ``name``: this process's, or ``source`` executed as it (and registered,
    so that tracebacks show its lines and its models pickle)."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, SOURCE_ATTRIBUTE, None) == source:
        return module
    module = types.ModuleType(name)
    module.__file__ = filename
    setattr(module, SOURCE_ATTRIBUTE, source)
    sys.modules[name] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - machc's generated code
    for value in list(vars(module).values()):
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == name:
            value.__reduce_ex__ = _reduce_ex
    return module


def _reduce_ex(self: nn.Module, protocol: int):
    """Pickles a model of a loaded module as: rebuild the module from its source, then
    the model's state (parameters, buffers, sub-modules, as any nn.Module)."""
    cls = type(self)
    module = sys.modules[cls.__module__]
    args = (cls.__module__, module.__file__, getattr(module, SOURCE_ATTRIBUTE), cls.__qualname__)
    return (_rebuild, args, self.__dict__.copy())


def _rebuild(name: str, filename: str, source: str, qualname: str) -> nn.Module:
    cls = getattr(module_from_source(name, filename, source), qualname)
    return cls.__new__(cls)
