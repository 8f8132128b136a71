"""Benchmark: the generated convolutional machine against hand-written PyTorch.

``ConvMachine`` from ``examples/conv.mach`` (block ``h[i]`` is a 3×3 convolution
of the image and all earlier blocks, then ReLU; the head is a global average
pool and a linear layer) is compiled for ``--size``×``--size`` images (32 by
default; the example itself is for 28×28 digits and stays so: the script writes a
variant of its text with the image size replaced). Modules computing the same
function (same weights) are timed in one run, forward + backward per iteration:

- ``generated``: the compiled ``ConvMachine`` (edges run once each, in
  dependency order);
- ``hand-written``: the same architecture written the way a careful PyTorch
  user writes a DenseNet (``nn.ModuleList`` of ``nn.Conv2d``, a list of
  features, ``torch.cat``, ``torch.relu``, ``F.adaptive_avg_pool2d``, ``nn.Linear``);
- ``naive`` (only with ``--naive``: it costs about ``blocks + 2`` forward
  passes): the fixed-point iteration ``x <- f(x) + x0``, ``blocks + 2`` sweeps
  of the generated module's ``f``.

- ``no-regroup``: the generated module compiled with ``--no-regroup``: forward
  keeps each concatenation for the backward, as the hand-written module does.

Before timing, outputs and parameter gradients of all variants must agree, and the
memory each variant's forward leaves allocated is measured (``kept MiB``: what
autograd keeps for the backward, and the output; ``dense.kept_bytes``). Repeats
interleave the variants (cycling through every order); each
time printed is the median over repeats of the mean time per iteration, each
ratio the median over repeats of the per-repeat ratio. Each variant's page faults
per iteration are counted beside its time (``faults/iter``: a third of the time here
may be the kernel mapping memory for the allocator; docs/benchmarks.md, "Page
faults"). Timings are printed, never asserted.

Run from anywhere: ``.venv/bin/python benchmarks/conv.py [--blocks 16 --channels 12 ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import machc
import torch
import torch.nn.functional as F
from dense import (  # benchmarks/dense.py (the script's folder is on sys.path): shared helpers
    FAULTS_NOTE,
    NaiveResolvent,
    check_agreement,
    environment,
    interleaved_samples,
    kept_bytes,
    warn_if_busy,
)
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
CONV_MACH = REPO / "examples" / "conv.mach"
EXAMPLE_SIZE = 28  # the image size written in examples/conv.mach

IN_CHANNELS = 1
OUT_FEATURES = 10

TARGET_GENERATED_OVER_HAND = 0.85  # generated / hand-written must be at most this
TARGET_KEPT_OVER_HAND = 0.3  # kept memory, generated / hand-written
NOISY_MEDIAN_OVER_MIN = 1.5  # a median this far above its minimum means a busy machine


def conv_source(size: int) -> str:
    """The text of examples/conv.mach with its images (and blocks) size × size."""
    text = CONV_MACH.read_text()
    for old in (f"[1, {EXAMPLE_SIZE}, {EXAMPLE_SIZE}]", f"[c, {EXAMPLE_SIZE}, {EXAMPLE_SIZE}]"):
        if text.count(old) != 1:
            raise SystemExit(f"{CONV_MACH} no longer declares {old} once; update {__file__}")
        text = text.replace(old, old.replace(str(EXAMPLE_SIZE), str(size)))
    return text


def load_conv_machine(size: int, blocks: int, channels: int, **options) -> type[nn.Module]:
    """The ConvMachine class compiled for size × size images (``options``: of machc.load)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"conv{size}.mach"
        path.write_text(conv_source(size))
        module = machc.load(path, params={"blocks": blocks, "c": channels}, **options)
    return module.ConvMachine


class HandConv(nn.Module):
    """A DenseNet-style CNN: block i convolves the image and every earlier block."""

    def __init__(self, blocks: int, channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Conv2d(IN_CHANNELS + i * channels, channels, 3, padding=1) for i in range(blocks)
        )
        self.head = nn.Linear(channels, OUT_FEATURES)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for block in self.blocks:
            features.append(torch.relu(block(torch.cat(features, dim=1))))
        return self.head(F.adaptive_avg_pool2d(features[-1], 1).flatten(1))


def copy_weights(generated: nn.Module, hand: HandConv, blocks: int) -> None:
    """Give the hand-written module exactly the generated module's weights."""
    # the loop g[i] is kept as a loop: its layers are the ModuleDict g, keyed by index
    pairs = [(generated.g[str(i + 1)], block) for i, block in enumerate(hand.blocks)]
    pairs.append((generated.head, hand.head))
    assert len(pairs) == blocks + 1
    with torch.no_grad():
        for src, dst in pairs:
            assert src.weight.shape == dst.weight.shape, (src.weight.shape, dst.weight.shape)
            assert src.bias.shape == dst.bias.shape, (src.bias.shape, dst.bias.shape)
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16, help="number of blocks (default 16)")
    parser.add_argument(
        "--channels", type=int, default=12, help="channels per block, c (default 12)"
    )
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed repeats per variant (default 10)"
    )
    parser.add_argument(
        "--iterations", type=int, default=1, help="iterations per repeat (default 1)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="warm-up iterations per variant (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--naive", action="store_true", help="also time the naive resolvent (slow: ~blocks x)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    if min(args.blocks, args.channels, args.size, args.batch, args.repeats, args.iterations) < 1:
        parser.error("blocks, channels, size, batch, repeats and iterations must be positive")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    generated = load_conv_machine(args.size, args.blocks, args.channels)()
    plain = load_conv_machine(args.size, args.blocks, args.channels, rewrites=())()
    plain.load_state_dict(generated.state_dict())
    hand = HandConv(args.blocks, args.channels)
    copy_weights(generated, hand, args.blocks)
    variants: dict[str, nn.Module] = {
        "generated": generated,
        "no-regroup": plain,
        "hand-written": hand,
    }
    if args.naive:
        variants["naive"] = NaiveResolvent(generated, sweeps=args.blocks + 2)

    x = torch.randn(args.batch, IN_CHANNELS, args.size, args.size)
    check_agreement(variants, x)
    kept_mib = {name: kept_bytes(mod, x) / 2**20 for name, mod in variants.items()}
    kept_over_hand = kept_mib["generated"] / kept_mib["hand-written"]

    faults: dict[str, float] = {}
    samples = interleaved_samples(
        variants, x, args.warmup, args.repeats, args.iterations, faults=faults
    )
    names = list(variants)

    median_ms = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    min_ms = {name: 1000 * min(s) for name, s in samples.items()}
    ratios = {  # paired: the variants ran back to back within a repeat
        name: statistics.median(
            v / g for v, g in zip(samples[name], samples["generated"], strict=True)
        )
        for name in names
    }
    gen_over_hand = statistics.median(
        g / h for g, h in zip(samples["generated"], samples["hand-written"], strict=True)
    )
    gen_over_hand_of_medians = median_ms["generated"] / median_ms["hand-written"]
    met_hand = gen_over_hand <= TARGET_GENERATED_OVER_HAND
    noisy = any(median_ms[name] > NOISY_MEDIAN_OVER_MIN * min_ms[name] for name in names)

    threads = torch.get_num_threads()
    print(
        f"conv machine: blocks={args.blocks} c={args.channels} images "
        f"{IN_CHANNELS}x{args.size}x{args.size} batch={args.batch}; "
        f"torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats x {args.iterations} iterations, {args.warmup} warm-up"
    )
    print(f"outputs and gradients of all {len(names)} variants agree (checked before timing)")
    print()
    print(
        f"{'variant':<14} {'median ms/iter':>15} {'min':>9} {'max':>9} {'kept MiB':>10}"
        f" {'/ generated':>12} {'faults/iter':>12}"
    )
    for name in names:
        s = samples[name]
        print(
            f"{name:<14} {median_ms[name]:>15.2f} {min_ms[name]:>9.2f} {1000 * max(s):>9.2f}"
            f" {kept_mib[name]:>10.2f} {ratios[name]:>12.3f} {faults[name]:>12,.0f}"
        )
    print()
    print("ratios: median over repeats of the per-repeat ratio (ratio of the medians in brackets)")
    print(
        f"generated / hand-written = {gen_over_hand:.3f} ({gen_over_hand_of_medians:.3f}); "
        f"target <= {TARGET_GENERATED_OVER_HAND}: {'met' if met_hand else 'NOT met'}"
    )
    if args.naive:
        naive_of_medians = median_ms["naive"] / median_ms["generated"]
        print(f"naive / generated        = {ratios['naive']:.2f} ({naive_of_medians:.2f})")
    met_kept = kept_over_hand <= TARGET_KEPT_OVER_HAND
    print(
        f"kept memory, generated / hand-written = {kept_over_hand:.3f}; target <= "
        f"{TARGET_KEPT_OVER_HAND}: {'met' if met_kept else 'NOT met'}"
    )
    print(
        "kept MiB: what forward leaves allocated (what autograd keeps for the backward, and "
        "the output; counted by PyTorch's profiler)"
    )
    print(FAULTS_NOTE)
    warn_if_busy(noisy)

    if args.json is not None:
        report = {
            "benchmark": "conv",
            "blocks": args.blocks,
            "channels": args.channels,
            "size": args.size,
            "batch": args.batch,
            "repeats": args.repeats,
            "iterations": args.iterations,
            "warmup": args.warmup,
            **environment(threads),
            "median_ms": median_ms,
            "min_ms": min_ms,
            "samples_ms": {name: [1000 * t for t in s] for name, s in samples.items()},
            "faults_per_iteration": faults,
            "kept_mib": kept_mib,
            "kept_over_hand": kept_over_hand,
            "over_generated": ratios,
            "generated_over_hand": gen_over_hand,
            "generated_over_hand_of_medians": gen_over_hand_of_medians,
            "noisy": noisy,
            "target_generated_over_hand": TARGET_GENERATED_OVER_HAND,
            "target_generated_over_hand_met": met_hand,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
