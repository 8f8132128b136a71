"""Benchmark: what sizes known at call time cost a call of ``forward``.

One machine is compiled twice: with its input declared ``[3, H, W]`` (the generated
``forward`` binds ``H`` and ``W`` with ``runtime.bind_sizes`` and checks a relation
with ``runtime.check_size``) and with ``[3, S, S]`` for a fixed ``S`` (no binding, no
check). Both get the same weights and must give equal outputs; then they are timed
in turn (alternating which runs first), ``forward`` under ``torch.no_grad()``, and the
script prints the median time per call of each and the median of the per-round ratio
symbolic / fixed. Timings are printed, never asserted.

The machine: a strided stem, a pooled branch upsampled and added back (the relation
``2 * ((H + 1) // 4) == (H + 1) // 2``) and a classifier head: small, so that the
fixed cost of binding shows.

Run from anywhere: ``.venv/bin/python benchmarks/sizes.py [--size 32 --batch 1 32
--rounds 200 --threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import machc
import torch

SOURCE = """
machine AnySize(c: int = 8) {
    input  img : SHAPE
    space  a
    space  d
    space  u
    output y : 10

    stem : img -> a = conv(3, stride=2, padding=1, out=c) | relu
    down : a -> d = maxpool(2)
    up   : d -> u = upsample(2)
    skip : a -> u = identity
    head : u -> y = global_avg_pool | linear
}
"""


def load(folder: Path, name: str, shape: str):
    path = folder / f"{name}.mach"
    path.write_text(SOURCE.replace("SHAPE", shape), encoding="utf-8")
    return machc.load(path).AnySize().eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image size S (default 32)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    parser.add_argument("--rounds", type=int, default=200, help="timed calls of each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        symbolic = load(Path(folder), "symbolic", "[3, H, W]")
        fixed = load(Path(folder), "fixed", f"[3, {args.size}, {args.size}]")
    fixed.load_state_dict(symbolic.state_dict())
    print(
        f"sizes known at call time: image {args.size}x{args.size}, {args.rounds} rounds, "
        f"torch {torch.__version__}, {args.threads} threads; forward under no_grad"
    )
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size)
        times: dict[str, list[float]] = {"symbolic": [], "fixed": []}
        with torch.no_grad():
            if not torch.equal(symbolic(x), fixed(x)):
                raise SystemExit("the two modules disagree")
            for r in range(args.rounds):
                pairs = [("symbolic", symbolic), ("fixed", fixed)]
                for name, model in pairs if r % 2 else pairs[::-1]:
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
        per_round = zip(times["symbolic"], times["fixed"], strict=True)
        ratio = statistics.median(a / b for a, b in per_round)
        medians = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(
            f"batch {batch}: symbolic {medians['symbolic']:.0f} us, fixed "
            f"{medians['fixed']:.0f} us, symbolic / fixed = {ratio:.3f} (outputs agree)"
        )


if __name__ == "__main__":
    main()
