"""Benchmark: sibling linear layers, separate or as one matmul (issue 11, part 2).

Edges of one level that read the same product and start with a ``linear`` could run as
one matmul whose output is split. machc keeps each edge's parameters its own (the
``state_dict`` must not change), so the fused form concatenates the weights on every
call. This script times, in one process, for several shapes, forward + backward of

- ``separate``: ``torch.tanh(layer(x))`` for each layer, as generated code runs them;
- ``fused``: ``F.linear(x, cat(weights), cat(biases)).split(...)``, then ``tanh``;

interleaved (``--repeats`` rounds of ``--iterations`` calls of each), and prints the
median over rounds of fused / separate. Timings are printed, never asserted. The
figures are in docs/performance.md ("Sibling edges").

Run from anywhere: ``.venv/bin/python benchmarks/siblings.py [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# (input features, output features of each sibling, batch)
SHAPES = [
    (8, [8, 8], 32),
    (8, [8, 8], 256),
    (32, [32, 32, 32], 64),
    (64, [64, 64, 64, 64], 32),
    (64, [64, 64, 64], 1024),
    (128, [32, 32, 32], 256),
    (128, [128, 128], 256),
    (256, [64, 64, 64], 256),
    (256, [256, 256, 256], 256),
    (512, [128, 128, 128], 256),
]


def ratio(features: int, outs: list[int], batch: int, repeats: int, iterations: int):
    """(median fused / separate, separate µs per call) for one shape."""
    torch.manual_seed(0)
    layers = nn.ModuleList(nn.Linear(features, out) for out in outs)
    x = torch.randn(batch, features, requires_grad=True)

    def separate() -> None:
        sum(torch.tanh(layer(x)).sum() for layer in layers).backward()

    def fused() -> None:
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        parts = F.linear(x, weight, bias).split(outs, dim=-1)
        sum(torch.tanh(part).sum() for part in parts).backward()

    # the same numbers up to the order of the backward's sums
    for run in (separate, fused):
        x.grad = None
        run()
        if run is separate:
            expected = x.grad.clone()
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-5)
    for _ in range(5):
        separate()
        fused()
    ratios, times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            separate()
        apart = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(iterations):
            fused()
        together = time.perf_counter() - start
        ratios.append(together / apart)
        times.append(apart / iterations)
    return statistics.median(ratios), 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    parser.add_argument(
        "--iterations", type=int, default=20, help="calls per round and form (default 20)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if min(args.repeats, args.iterations) < 1:
        parser.error("repeats and iterations must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"sibling linears, forward + backward; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.repeats} rounds x {args.iterations} calls"
    )
    print(
        f"{'in':>5} {'outs':<18} {'batch':>6} {'weights':>8} {'separate µs':>12}"
        f" {'fused / separate':>17}"
    )
    for features, outs, batch in SHAPES:
        r, micros = ratio(features, outs, batch, args.repeats, args.iterations)
        outs_text = f"{len(outs)} x {outs[0]}"
        print(
            f"{features:>5} {outs_text:<18} {batch:>6} {features * sum(outs):>8} "
            f"{micros:>12.0f} {r:>17.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
