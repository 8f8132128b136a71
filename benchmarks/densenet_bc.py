"""Benchmark: a generated DenseNet-BC block against hand-written PyTorch.

``DenseBlockBC`` from ``examples/densenet_bc.mach`` (layer ``h[i]`` normalises and
rectifies the concatenation of the input and every earlier layer, then a 1×1
bottleneck and a 3×3 convolution; a head classifies all the block's features) is
timed, forward + backward per iteration, against modules computing the same function
with the same weights:

- ``no-regroup``: the generated module compiled with ``--no-regroup``
  (docs/performance.md): forward keeps each layer's concatenation, and what
  batchnorm and relu make of it, for the backward;
- ``hand-written``: torchvision's DenseNet layer, as a careful user writes it
  (``torch.cat``, ``norm1``, ``relu``, ``conv1``, ``norm2``, ``relu``, ``conv2``);
- ``checkpointed``: the same with torchvision's ``memory_efficient=True``: the
  concatenation, the first batchnorm, relu and the 1×1 convolution are run again in
  the backward by ``torch.utils.checkpoint`` (it updates batchnorm's running
  statistics twice: they are not compared).

Before timing, outputs and gradients must agree, and the memory forward leaves
allocated is measured (``kept MiB``, as ``dense.py`` measures it). Repeats interleave
the variants; times are medians over repeats, ratios medians of per-repeat ratios,
and each variant's page faults per iteration are counted (``faults/iter``). Timings
are printed, never asserted.

Run from anywhere: ``.venv/bin/python benchmarks/densenet_bc.py [--layers 12 ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import machc
import torch
import torch.nn.functional as F
from dense import (  # benchmarks/dense.py (the script's folder is on sys.path): shared helpers
    FAULTS_NOTE,
    NOISY_MEDIAN_OVER_MIN,
    check_agreement,
    environment,
    interleaved_samples,
    kept_bytes,
    warn_if_busy,
)
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

REPO = Path(__file__).resolve().parent.parent
BC_MACH = REPO / "examples" / "densenet_bc.mach"

TARGET_GENERATED_OVER_HAND = 1.15  # generated / hand-written must be at most this
TARGET_KEPT_OVER_HAND = 0.5  # kept memory, generated / hand-written


class HandLayer(nn.Module):
    """torchvision's ``_DenseLayer`` (no dropout)."""

    def __init__(self, channels: int, k: int, memory_efficient: bool) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, 4 * k, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * k)
        self.conv2 = nn.Conv2d(4 * k, k, 3, padding=1, bias=False)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: Tensor) -> Tensor:
        return self.conv1(F.relu(self.norm1(torch.cat(features, 1))))

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient:
            out = checkpoint(self.bottleneck, *features, use_reentrant=False)
        else:
            out = self.bottleneck(*features)
        return self.conv2(F.relu(self.norm2(out)))


class HandBlock(nn.Module):
    def __init__(self, layers: int, k: int, c: int, memory_efficient: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            HandLayer(c + i * k, k, memory_efficient) for i in range(layers)
        )
        self.norm = nn.BatchNorm2d(c + layers * k)
        self.head = nn.Linear(c + layers * k, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        out = F.relu(self.norm(torch.cat(features, 1)))
        return self.head(out.mean(dim=(2, 3)))


def copy_weights(generated: nn.Module, hand: HandBlock) -> None:
    """The hand-written block gets the generated module's parameters and buffers."""
    with torch.no_grad():
        for i, layer in enumerate(hand.layers, start=1):
            norm1, conv1, norm2, conv2 = generated.g[str(i)]
            for src, dst in ((norm1, layer.norm1), (conv1, layer.conv1)):
                dst.load_state_dict(src.state_dict())
            for src, dst in ((norm2, layer.norm2), (conv2, layer.conv2)):
                dst.load_state_dict(src.state_dict())
        hand.norm.load_state_dict(generated.head[0].state_dict())
        hand.head.load_state_dict(generated.head[1].state_dict())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="layers of the block (default 12)")
    parser.add_argument("--k", type=int, default=12, help="growth rate (default 12)")
    parser.add_argument("--channels", type=int, default=24, help="input channels (default 24)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (default 10)")
    parser.add_argument("--iterations", type=int, default=1, help="per repeat (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="per variant (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="figures as JSON")
    args = parser.parse_args(argv)
    sizes = (args.layers, args.k, args.channels, args.size, args.batch)
    if min(*sizes, args.repeats, args.iterations) < 1:
        parser.error("sizes, repeats and iterations must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    params = {"layers": args.layers, "k": args.k, "c": args.channels, "side": args.size}
    generated = machc.load(BC_MACH, params=params).DenseBlockBC()
    plain = machc.load(BC_MACH, params=params, rewrites=()).DenseBlockBC()
    plain.load_state_dict(generated.state_dict())
    hand = HandBlock(args.layers, args.k, args.channels)
    copy_weights(generated, hand)
    efficient = HandBlock(args.layers, args.k, args.channels, memory_efficient=True)
    copy_weights(generated, efficient)
    variants: dict[str, nn.Module] = {
        "generated": generated,
        "no-regroup": plain,
        "hand-written": hand,
        "checkpointed": efficient,
    }
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    check_agreement(variants, x)
    kept_mib = {name: kept_bytes(mod, x) / 2**20 for name, mod in variants.items()}
    faults: dict[str, float] = {}
    samples = interleaved_samples(
        variants, x, args.warmup, args.repeats, args.iterations, faults=faults
    )
    names = list(variants)
    median_ms = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    min_ms = {name: 1000 * min(s) for name, s in samples.items()}
    over_hand = {
        name: statistics.median(
            v / h for v, h in zip(samples[name], samples["hand-written"], strict=True)
        )
        for name in names
    }
    kept_over_hand = kept_mib["generated"] / kept_mib["hand-written"]
    noisy = any(median_ms[name] > NOISY_MEDIAN_OVER_MIN * min_ms[name] for name in names)

    threads = torch.get_num_threads()
    print(
        f"DenseNet-BC block: layers={args.layers} k={args.k} input {args.channels}x{args.size}"
        f"x{args.size} batch={args.batch}; torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats x {args.iterations} iterations, {args.warmup} warm-up"
    )
    print(f"outputs and gradients of all {len(names)} variants agree (checked before timing)")
    print()
    print(
        f"{'variant':<14} {'median ms/iter':>15} {'min':>9} {'kept MiB':>10} {'/ hand':>8}"
        f" {'faults/iter':>12}"
    )
    for name in names:
        print(
            f"{name:<14} {median_ms[name]:>15.1f} {min_ms[name]:>9.1f} {kept_mib[name]:>10.2f}"
            f" {over_hand[name]:>8.3f} {faults[name]:>12,.0f}"
        )
    print()
    met_time = over_hand["generated"] <= TARGET_GENERATED_OVER_HAND
    met_kept = kept_over_hand <= TARGET_KEPT_OVER_HAND
    print(
        f"generated / hand-written = {over_hand['generated']:.3f}; target <= "
        f"{TARGET_GENERATED_OVER_HAND}: {'met' if met_time else 'NOT met'}"
    )
    print(
        f"kept memory, generated / hand-written = {kept_over_hand:.3f}; target <= "
        f"{TARGET_KEPT_OVER_HAND}: {'met' if met_kept else 'NOT met'}"
    )
    print(FAULTS_NOTE)
    warn_if_busy(noisy)
    if args.json is not None:
        report = {
            "benchmark": "densenet_bc",
            **vars(args) | {"json": None},
            **environment(threads),
            "median_ms": median_ms,
            "min_ms": min_ms,
            "kept_mib": kept_mib,
            "over_hand": over_hand,
            "kept_over_hand": kept_over_hand,
            "faults_per_iteration": faults,
            "noisy": noisy,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
