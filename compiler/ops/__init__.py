"""The op table: every op an edge's pipeline may use, one :class:`OpSpec` entry each.

An entry says which arguments the op takes, which input ranks it accepts, how
it maps shapes, which channel counts it needs, how many parameters it has, and
the Python source that constructs its layer (if it has one) and applies it.
Adding an op is adding one entry to a family's module and to :data:`OPS`
(``table.py``); the stages look ops up here and nowhere else. Code here is
torch-free: it only writes source text.

- ``spec``: what an entry is (:class:`OpSpec`, :class:`ArgSpec`), argument
  kinds and checks, :class:`OpError`;
- ``dense``, ``conv``, ``norm``, ``module``, ``sequence``: the entries, by family;
- ``table``: :data:`OPS`, every entry by name;
- ``pipeline``: binding a call's arguments, and shapes through a pipeline.

Shapes are per sample, channel (feature) axis first: ``[C]`` a vector,
``[C, L]`` a signal, ``[C, H, W]`` an image, ``[C, D, H, W]`` a volume. An op
that *changes channels* (``linear``, ``conv``, ``module``) takes its output
channel count from ``out=``, or, if it is the last such op of its pipeline,
from the edge's declared outputs (through whatever the later ops do to the
channel count, such as ``flatten``).
"""

from .pipeline import Bound, NeedsOutputs, bind_args, combined_shape, infer_pipeline
from .spec import (
    BOOL,
    CHANNEL_DIM,
    FLOAT,
    INT,
    INTS,
    NUMS,
    REQUIRED,
    STR,
    ArgSpec,
    ArgValues,
    OpError,
    OpSpec,
    Site,
    format_shape,
    py_literal,
)
from .table import OPS

__all__ = [
    "BOOL",
    "CHANNEL_DIM",
    "FLOAT",
    "INT",
    "INTS",
    "NUMS",
    "OPS",
    "REQUIRED",
    "STR",
    "ArgSpec",
    "ArgValues",
    "Bound",
    "NeedsOutputs",
    "OpError",
    "OpSpec",
    "Site",
    "bind_args",
    "combined_shape",
    "format_shape",
    "infer_pipeline",
    "py_literal",
]
