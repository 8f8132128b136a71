"""Sizes known at call time in the fuzzer's generator, and what the fuzzer found.

The well-formed generator (tests/fuzz/wellformed.py) draws signals, images and volumes
whose inputs declare size symbols (``input img : [3, H, W]``), hidden shapes written in
them, relations between sizes, and machines with symbols used as edges. These tests
check that it still does (a generator that silently stopped drawing them would leave
the feature unfuzzed), and keep what it found, each a minimal reproducer, as
regression tests.
"""

from __future__ import annotations

import importlib
import random
import re
import sys
import warnings
from pathlib import Path

import machc
import torch

ROOT = Path(__file__).resolve().parents[2]


def wellformed():
    """tests.fuzz.wellformed, with the repository on the path (pytest may not put it)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("tests.fuzz.wellformed")


def compiled(source: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, "symbolic.mach")
    namespace: dict = {"__name__": "machc_symbolic_random"}
    exec(compile(code, "symbolic.mach", "exec"), namespace)  # noqa: S102 - code we just generated
    return namespace


def test_the_generator_draws_machines_with_sizes_known_at_call_time() -> None:
    """Of 150 well-formed draws, many compile to modules that bind sizes at call time,
    some check relations between them, some have several classes with symbols (machines
    used as edges), and none raises anything but a CompileError."""
    generator = wellformed()
    counts = dict.fromkeys(["modules", "symbols", "relations", "several"], 0)
    for i in range(150):
        source = generator.well_formed(random.Random(f"symbolic:{i}"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", machc.MachcWarning)
                code = machc.compile_source(source, "drawn.mach")
        except machc.CompileError:
            continue
        counts["modules"] += 1
        if "runtime.bind_sizes(" in code:
            counts["symbols"] += 1
            counts["relations"] += "runtime.check_size(" in code
            counts["several"] += len(re.findall(r"bind_sizes\(self, \{", code)) > 1
    assert counts["modules"] >= 100, counts
    assert counts["symbols"] >= 20, counts
    assert counts["relations"] >= 3, counts
    assert counts["several"] >= 3, counts


def test_the_relations_of_a_machine_used_as_an_edge_hold_at_the_example_sizes() -> None:
    """P needs L odd (its two writers of a agree then); PU on a, of size (L + 1) // 2,
    needs that even: L = 35 does both, but P's example inputs have L = 33 (the parent's
    own relations only), and forward raises in PU. (Found by the fuzzer; with a size the
    parent accepts, L = 1, PU also says L is too small for it.)"""
    source = """
machine PU(c: int = 4) {
    input  x : [c, L]
    space  d : [c, L // 2]
    output y : [c, L]
    down : x -> d = maxpool(2)
    up : d -> y = upsample(2)
    skip : x -> y = identity
}
machine P {
    input  x : [3, L]
    space  a : [3, (L + 1) // 2]
    output y
    one : x -> a = conv(2, padding=1) | maxpool(2)
    two : x -> a = maxpool(2) | conv(2, padding=1)
    p : a -> y = PU(c=3)
}
"""
    model = compiled(source)["P"]().eval()
    with torch.no_grad():
        model(*model.example_inputs(2))


def test_a_volume_with_sizes_known_at_call_time_checks() -> None:
    """2 * D * H * W at D = H = W = 1024 is over 2^31, so check refuses any volume of two
    channels or more, although the example sizes (32) make 65,536 numbers."""
    source = """
machine V {
    input  x : [2, D, H, W]
    output y : [2, D, H, W]
    f : x -> y = relu
}
"""
    model = compiled(source)["V"]()
    x = torch.randn(1, 2, 4, 5, 6)
    torch.testing.assert_close(model(x), torch.relu(x))
