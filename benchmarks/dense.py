"""Benchmark: the generated dense machine against hand-written PyTorch and the naive resolvent.

Modules computing the same function (same weights) are timed in one run,
forward + backward per iteration:

- ``generated``: ``DenseMachine`` compiled from ``examples/dense.mach``
  (edges run once each, in dependency order);
- ``hand-written``: the same architecture written the way a careful PyTorch
  user would (``nn.ModuleList`` of ``nn.Linear``, a list of features,
  ``torch.cat``, ``torch.relu``);
- ``no-regroup``: the generated module compiled with ``--no-regroup``
  (docs/performance.md): forward keeps each concatenation for the backward, as the
  hand-written module does;
- ``naive``: the fixed-point iteration ``x <- f(x) + x0``, ``depth + 2`` sweeps
  of the generated module's global endofunction ``f`` (the definition of the
  resolvent, which is the compiler's test oracle, never its code generation).

Before timing, the memory each variant's forward leaves allocated is measured (what
autograd keeps for the backward, and the output; PyTorch's profiler counts the CPU
allocations): ``kept MiB``. The variants are interleaved across repeats (cycling
through every order) so machine noise hits them alike. A repeat times a few
iterations of each variant back to back; each time printed is the median over
repeats of the mean time per iteration, and each ratio is the median over repeats
of the per-repeat ratio (the ratio of the medians is printed beside it). Timings are
printed, never asserted.

Run from anywhere: ``.venv/bin/python benchmarks/dense.py [--depth 8 --width 128 ...]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import resource  # page faults (Unix)
except ImportError:
    resource = None

import machc
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
DENSE_MACH = REPO / "examples" / "dense.mach"

IN_FEATURES = 16
OUT_FEATURES = 10

TARGET_GENERATED_OVER_HAND = 1.00  # generated / hand-written must be at most this
TARGET_KEPT_OVER_HAND = 0.3  # kept memory, generated / hand-written, for a deep machine
TARGET_NAIVE_OVER_GENERATED = 4.0  # naive / generated must be at least this
NOISY_MEDIAN_OVER_MIN = 1.5  # a median this far above its minimum means a busy machine


class HandDense(nn.Module):
    """A DenseNet-style MLP: block i reads the input and every earlier block."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(IN_FEATURES + i * width, width) for i in range(depth))
        self.head = nn.Linear(width, OUT_FEATURES)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for block in self.blocks:
            features.append(torch.relu(block(torch.cat(features, dim=1))))
        return self.head(features[-1])


class NaiveResolvent(nn.Module):
    """The resolvent by its definition: iterate x <- f(x) + x0 until it is exact.

    For a machine with one input and one output (also used by ``conv.py``).
    """

    def __init__(self, machine: nn.Module, sweeps: int) -> None:
        super().__init__()
        self.machine = machine
        self.sweeps = sweeps

    def forward(self, x: Tensor) -> Tensor:
        (given,) = self.machine.INPUTS
        (wanted,) = self.machine.OUTPUTS
        x0 = {
            name: x if name == given else x.new_zeros((x.shape[0], *shape))
            for name, shape in self.machine.SPACES.items()
        }
        state = x0
        for _ in range(self.sweeps):
            fx = self.machine.f(state)
            state = {k: fx[k] + x0[k] for k in x0}
        return state[wanted]


def copy_weights(generated: nn.Module, hand: HandDense, depth: int) -> None:
    """Give the hand-written module exactly the generated module's weights."""
    # the loop g[i] is kept as a loop: its layers are the ModuleDict g, keyed by index
    pairs = [(generated.g[str(i + 1)], block) for i, block in enumerate(hand.blocks)]
    pairs.append((generated.head, hand.head))
    assert len(pairs) == depth + 1
    with torch.no_grad():
        for src, dst in pairs:
            assert src.weight.shape == dst.weight.shape, (src.weight.shape, dst.weight.shape)
            assert src.bias.shape == dst.bias.shape, (src.bias.shape, dst.bias.shape)
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def check_agreement(variants: dict[str, nn.Module], x: Tensor) -> None:
    """Fail loudly unless all variants compute the same outputs and gradients."""
    outputs: dict[str, Tensor] = {}
    grads: dict[str, list[Tensor]] = {}
    for name, module in variants.items():
        module.zero_grad(set_to_none=True)
        out = module(x)
        out.square().mean().backward()
        outputs[name] = out.detach()
        # Gradients in a common order: blocks g_1..g_depth, then head (weight, bias each).
        grads[name] = [p.grad.detach().clone() for p in module.parameters()]
        module.zero_grad(set_to_none=True)
    reference = "generated"
    for name, out in outputs.items():
        if out.shape != outputs[reference].shape or not torch.allclose(
            out, outputs[reference], rtol=1e-4, atol=1e-5
        ):
            diff = (
                (out - outputs[reference]).abs().max().item()
                if out.shape == outputs[reference].shape
                else "n/a"
            )
            raise AssertionError(f"{name} output disagrees with {reference} (max abs diff {diff})")
        if len(grads[name]) != len(grads[reference]) or not all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5)
            for a, b in zip(grads[name], grads[reference], strict=True)
        ):
            raise AssertionError(f"{name} gradients disagree with {reference}")


def kept_bytes(module: nn.Module, x: Tensor) -> int:
    """Bytes forward leaves allocated: what autograd keeps for the backward, and the output.

    PyTorch's profiler counts every CPU allocation and free of the ops. (Saved-tensor
    hooks would see what autograd keeps too, but ``runtime.regroup`` steps aside for
    hooks of the user's: measured that way, a regrouped module is its plain form.)
    """
    from torch.profiler import ProfilerActivity, profile

    module.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = module(x)
    del out
    return sum(event.self_cpu_memory_usage for event in prof.events())


def step(module: nn.Module, x: Tensor) -> None:
    """One training-like iteration: zero grads, forward, loss, backward."""
    module.zero_grad(set_to_none=True)
    module(x).square().mean().backward()


def time_per_iteration(fn: Callable[[], None], iterations: int) -> float:
    """Mean seconds per call of fn over iterations calls."""
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


def interleaved_samples(
    variants: dict[str, nn.Module],
    x: Tensor,
    warmup: int,
    repeats: int,
    iterations: int,
    faults: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Seconds per iteration (``step``) of each variant, per repeat, after ``warmup``
    iterations each. Each repeat runs every variant back to back, cycling through every
    order of the variants, so that each runs first, last and right after each other one
    equally often (the one after naive, say, may find its caches and allocator in a
    different state). ``faults``, if given, receives each variant's median of the page
    faults per iteration (``minor_faults``)."""
    for mod in variants.values():
        for _ in range(warmup):
            step(mod, x)
    orders = list(itertools.permutations(variants))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    counted: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            mod = variants[name]
            before = minor_faults()
            samples[name].append(time_per_iteration(lambda mod=mod: step(mod, x), iterations))
            counted[name].append((minor_faults() - before) / iterations)
    if faults is not None:
        faults.update({name: statistics.median(c) for name, c in counted.items()})
    return samples


FAULTS_NOTE = (
    "faults/iter: pages the kernel mapped and zeroed for the allocator, per iteration "
    "(median). glibc's malloc gives blocks of over 32 MiB back to the kernel when they are "
    "freed, so a variant that keeps less memory may take fewer of them: part of what it "
    "saves in time comes from there (docs/benchmarks.md, 'Page faults')"
)


def minor_faults() -> int:
    """The page faults this process took so far that read no disk: each is a page the
    kernel mapped and zeroed for the allocator (0 where the platform does not count)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warn_if_busy(noisy: bool) -> None:
    """The warning every benchmark prints when its medians show a busy machine."""
    if noisy:
        print(
            f"warning: a median is over {NOISY_MEDIAN_OVER_MIN}x its minimum, so the machine was "
            "busy; absolute times are unreliable (ratios less so). Try a quiet machine, or "
            "--threads 1 when another process holds a core."
        )


def environment(threads: int) -> dict:
    """What a JSON report records about where it ran."""
    return {
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8, help="number of dense blocks (default 8)")
    parser.add_argument("--width", type=int, default=128, help="features per block (default 128)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument(
        "--repeats", type=int, default=60, help="timed repeats per variant (default 60)"
    )
    parser.add_argument(
        "--iterations", type=int, default=5, help="iterations per repeat (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="warm-up iterations per variant (default 10)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    if (
        args.depth < 1
        or args.width < 1
        or args.batch < 1
        or args.repeats < 1
        or args.iterations < 1
    ):
        parser.error("depth, width, batch, repeats and iterations must be positive")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    params = {"depth": args.depth, "width": args.width}
    generated = machc.load(DENSE_MACH, params=params).DenseMachine()
    plain = machc.load(DENSE_MACH, params=params, rewrites=()).DenseMachine()
    plain.load_state_dict(generated.state_dict())
    hand = HandDense(args.depth, args.width)
    copy_weights(generated, hand, args.depth)
    naive = NaiveResolvent(generated, sweeps=args.depth + 2)
    variants: dict[str, nn.Module] = {
        "generated": generated,
        "no-regroup": plain,
        "hand-written": hand,
        "naive": naive,
    }

    x = torch.randn(args.batch, IN_FEATURES)
    check_agreement(variants, x)
    kept_mib = {name: kept_bytes(mod, x) / 2**20 for name, mod in variants.items()}
    kept_over_hand = kept_mib["generated"] / kept_mib["hand-written"]

    samples = interleaved_samples(variants, x, args.warmup, args.repeats, args.iterations)
    names = list(variants)

    median_ms = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    min_ms = {name: 1000 * min(s) for name, s in samples.items()}
    # The headline ratios are paired: within one repeat the variants ran back to back,
    # so their ratio there cancels most of the machine's drift; the median of those
    # per-repeat ratios is the figure we judge. The ratio of the medians is printed too.
    gen_over_hand = statistics.median(
        g / h for g, h in zip(samples["generated"], samples["hand-written"], strict=True)
    )
    naive_over_gen = statistics.median(
        n / g for n, g in zip(samples["naive"], samples["generated"], strict=True)
    )
    gen_over_hand_of_medians = median_ms["generated"] / median_ms["hand-written"]
    naive_over_gen_of_medians = median_ms["naive"] / median_ms["generated"]
    met_hand = gen_over_hand <= TARGET_GENERATED_OVER_HAND
    met_naive = naive_over_gen >= TARGET_NAIVE_OVER_GENERATED
    noisy = any(median_ms[name] > NOISY_MEDIAN_OVER_MIN * min_ms[name] for name in names)

    threads = torch.get_num_threads()
    print(
        f"dense machine: depth={args.depth} width={args.width} batch={args.batch}; "
        f"torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats x {args.iterations} iterations, {args.warmup} warm-up"
    )
    print(f"outputs and gradients of all {len(names)} variants agree (checked before timing)")
    print()
    print(f"{'variant':<14} {'median ms/iter':>15} {'min':>8} {'max':>8} {'kept MiB':>9}")
    for name in names:
        s = samples[name]
        print(
            f"{name:<14} {median_ms[name]:>15.3f} {min_ms[name]:>8.3f} {1000 * max(s):>8.3f}"
            f" {kept_mib[name]:>9.2f}"
        )
    print()
    print("ratios: median over repeats of the per-repeat ratio (ratio of the medians in brackets)")
    print(
        f"generated / hand-written = {gen_over_hand:.3f} ({gen_over_hand_of_medians:.3f}); "
        f"target <= {TARGET_GENERATED_OVER_HAND}: {'met' if met_hand else 'NOT met'}"
    )
    print(
        f"naive / generated        = {naive_over_gen:.2f} ({naive_over_gen_of_medians:.2f}); "
        f"target >= {TARGET_NAIVE_OVER_GENERATED}: {'met' if met_naive else 'NOT met'}"
    )
    print(
        f"kept memory, generated / hand-written = {kept_over_hand:.3f} (target for deep "
        f"machines <= {TARGET_KEPT_OVER_HAND}; what forward leaves allocated for the backward)"
    )
    warn_if_busy(noisy)

    if args.json is not None:
        report = {
            "benchmark": "dense",
            "depth": args.depth,
            "width": args.width,
            "batch": args.batch,
            "repeats": args.repeats,
            "iterations": args.iterations,
            "warmup": args.warmup,
            **environment(threads),
            "median_ms": median_ms,
            "samples_ms": {name: [1000 * t for t in s] for name, s in samples.items()},
            "min_ms": min_ms,
            "kept_mib": kept_mib,
            "kept_over_hand": kept_over_hand,
            "generated_over_hand": gen_over_hand,
            "naive_over_generated": naive_over_gen,
            "generated_over_hand_of_medians": gen_over_hand_of_medians,
            "naive_over_generated_of_medians": naive_over_gen_of_medians,
            "noisy": noisy,
            "target_generated_over_hand": TARGET_GENERATED_OVER_HAND,
            "target_naive_over_generated": TARGET_NAIVE_OVER_GENERATED,
            "target_generated_over_hand_met": met_hand,
            "target_naive_over_generated_met": met_naive,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
