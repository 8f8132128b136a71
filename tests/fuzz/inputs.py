"""One fuzz input per (seed, index): which generator, and what it drew.

Input ``i`` of a run with seed ``S`` depends on ``S`` and ``i`` only, not on
the number of jobs or on what came before, so any input of a long run can be
drawn again on its own (``python -m tests.fuzz --show S:i``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import illformed, mutate, raw, wellformed

# Generator families and their weights (out of 100).
FAMILIES = {
    "well-formed": 24,
    "renamed": 14,
    "corrupted": 14,
    "set-params": 5,
    "hostile": 14,
    "mutation": 24,
    "raw-bytes": 5,
}


@dataclass(frozen=True)
class Case:
    """One input: the bytes of a .mach file and the ``--set`` values to compile it with."""

    data: bytes
    params: dict[str, str] = field(default_factory=dict)
    family: str = ""
    origin: str = ""  # more about where it came from: a corpus file, a raw kind
    seed: int = 0
    index: int = 0

    @property
    def name(self) -> str:
        return f"{self.seed}:{self.index}"


def generate(seed: int, index: int, families: tuple[str, ...] = ()) -> Case:
    """Input ``index`` of seed ``seed``, drawn from ``families`` only if given."""
    rng = random.Random(f"machc-fuzz:{seed}:{index}")
    names = [f for f in FAMILIES if not families or f in families]
    family = rng.choices(names, weights=[FAMILIES[f] for f in names])[0]
    params: dict[str, str] = {}
    origin = ""
    if family == "well-formed":
        text = wellformed.well_formed(rng)
    elif family == "renamed":
        text, params = illformed.renamed(rng)
    elif family == "corrupted":
        text, params = illformed.corrupted(rng)
    elif family == "set-params":
        text, params = illformed.set_params(rng)
    elif family == "hostile":
        text, params = illformed.hostile(rng)
    elif family == "mutation":
        origin, text = mutate.mutant(rng)
    else:
        origin, data = raw.raw_bytes(rng)
        return Case(data, {}, family, origin, seed, index)
    data = text.encode("utf-8", errors="surrogatepass")
    return Case(data, params, family, origin, seed, index)
