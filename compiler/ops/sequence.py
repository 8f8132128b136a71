"""Ops of sequence models: ``embedding`` reads ids, ``attention`` reads windows of steps.

Both are first ops of their pipelines and read the edge's inputs in their own way, which
the check stage turns into the shape entering them: ``embedding`` sees an ids space of
``V`` ids as the one-hot vectors ``[V]``, ``attention`` sees the values' shape. The
expression ``attention`` computes is written by lower, from the queries, keys and values.
"""

from __future__ import annotations

from ..ir import Shape
from .spec import (
    FLOAT,
    INT,
    OUT_ARG,
    REQUIRED,
    ArgSpec,
    OpError,
    OpSpec,
    Site,
    channels,
    positive,
    probability,
)


def _embedding_shape(args, before, target):
    return (channels(args, target),)


def _embedding_layer(site: Site, before: Shape, after: Shape) -> str:
    return f"nn.Embedding({before[0]}, {after[0]})"


def _embedding_params(args, before, after) -> int:
    return before[0] * after[0]


def _attention_check(args, before, after) -> None:
    heads, size = args["heads"], before[0]
    if size % heads:
        fits = max(h for h in range(1, heads) if size % h == 0)
        raise OpError(
            f"heads={heads} does not divide the size {size} of the values",
            hint=f"each head takes an equal share of the size; heads={fits} divides it",
        )


SEQUENCE_OPS = (
    OpSpec(
        name="embedding",
        doc="A learned vector for each id (nn.Embedding): the linear map of an ids space (token "
        "ids, or the time index for positions) read as one-hot vectors; first op only.",
        rule="ids(V) -> [out]",
        call="{layer}({x})",
        args=(
            ArgSpec(
                "num",
                (INT,),
                None,
                positive,
                "number of ids (tokens or positions); inferred from an ids space",
            ),
            OUT_ARG,
        ),
        ranks=(1, 1),
        changes_channels=True,
        ids=True,
        shape=_embedding_shape,
        layer=_embedding_layer,
        params=_embedding_params,
        # a lookup: no multiply-accumulates
    ),
    OpSpec(
        name="attention",
        doc="Multi-head scaled dot-product attention of the edge's three inputs: queries at "
        "the present step, then keys and values (through a window of steps); no parameters of "
        "its own; first op only.",
        rule="q [d] × k [d] × v [dv] -> [dv], heads divides d and dv",
        call="{x}",  # lower writes the call, from the queries, keys and values
        args=(
            ArgSpec("heads", (INT,), REQUIRED, positive, "number of heads; divides the size", True),
            ArgSpec("dropout", (FLOAT,), 0.0, probability, "attention dropout while training"),
        ),
        ranks=(1, 1),
        windows=True,
        check=_attention_check,
        # NOTE: no macs: they grow with the number of steps attended to, which a per-sample
        # count of one step cannot say.
    ),
)
