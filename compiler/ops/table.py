"""The op table itself: every op by name, in the order the docs and error hints list them."""

from __future__ import annotations

from .conv import CONVOLUTIONS, POOLING
from .dense import ACTIVATIONS, DROPOUTS, LINEAR, PASSING, RESHAPING
from .layout import LAYOUT
from .module import MODULE
from .norm import NORMS, RMSNORM
from .sequence import SEQUENCE_OPS
from .spec import OpSpec

_OP_LIST = (
    LINEAR,
    *CONVOLUTIONS,
    *PASSING,
    *ACTIVATIONS,
    *DROPOUTS,
    *NORMS,
    *POOLING,
    *RESHAPING,
    MODULE,
    # NOTE: newer ops come last, so that the order of the older ones (which "did you
    # mean" hints follow) stays as it was.
    RMSNORM,
    *SEQUENCE_OPS,
    *LAYOUT,
)

OPS: dict[str, OpSpec] = {spec.name: spec for spec in _OP_LIST}
