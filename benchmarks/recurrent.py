"""Benchmark: the generated recurrent machines against torch.nn.RNN, LSTM and GRU.

Pairs of modules computing the same function (same weights) are timed in one
run, forward + backward per iteration (``zero_grad``, forward, ``loss =
out.square().mean()``, ``backward``; the iteration of ``dense.py``):

- ``elman``: ``Elman`` compiled from ``examples/elman.mach`` (default n=16, m=64)
  against ``torch.nn.RNN(n, m, batch_first=True)`` followed by an
  ``nn.Linear(m, n)`` readout;
- ``lstm``: ``LSTM`` compiled from ``examples/lstm.mach`` (default n=32, m=128:
  the file's n=8, m=16 is so small that per-op overhead is all there is to
  measure) against ``torch.nn.LSTM(n, m, batch_first=True)``;
- ``gru2``: ``GRU2`` compiled from ``benchmarks/gru2.mach`` (two ``std.GRU``
  machines chained; default n=32, m=128) against ``torch.nn.GRU(n, m,
  num_layers=2, batch_first=True)``.

Each step loop of these machines is exactly PyTorch's cell, so the generated
``forward`` calls PyTorch's fused kernel (the rewrite ``cells``,
docs/performance.md); ``--no-cells`` times the step loop instead.

The torch modules are built first and their weights copied into the generated
ones (``torch.nn`` keeps two biases and one weight per gate; a machine keeps one
``nn.Linear`` per edge, over ``x × h[t-1]``). Before any timing the script checks
that outputs and parameter gradients agree (torch's gradients mapped the way the
weights were copied) and fails loudly otherwise.

Timing as in ``dense.py``: the two variants of a model are interleaved across
repeats (alternating which runs first); each time printed is the median over
repeats of the mean time per iteration, the ratio is the median over repeats of
the per-repeat ratio generated / torch (the ratio of the medians beside it).
Targets (generated / torch): Elman at most 1.00, LSTM and GRU2 at most 1.10.
Timings are printed, never asserted.

Run from anywhere: ``.venv/bin/python benchmarks/recurrent.py [--steps 1000 --threads 1 ...]``;
``--quick`` is a tiny smoke configuration (any explicit flag still wins).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import machc
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense import NOISY_MEDIAN_OVER_MIN, environment, step, time_per_iteration  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"

TARGETS = {"elman": 1.0, "lstm": 1.1, "gru2": 1.1}  # generated / torch at most this
MODELS = ("elman", "lstm", "gru2")

DEFAULTS = {
    "steps": 1000,
    "batch": 32,
    "repeats": 20,
    "iterations": 1,
    "warmup": 2,
    "elman_n": 16,
    "elman_m": 64,
    "lstm_n": 32,
    "lstm_m": 128,
    "gru2_n": 32,
    "gru2_m": 128,
}
QUICK = {
    "steps": 12,
    "batch": 3,
    "repeats": 2,
    "iterations": 1,
    "warmup": 1,
    "elman_n": 4,
    "elman_m": 6,
    "lstm_n": 5,
    "lstm_m": 7,
    "gru2_n": 5,
    "gru2_m": 7,
}

# Agreement in float32 after `steps` steps: rounding differs (one matmul over x × h
# against two), so the tolerance is looser than dense.py's; a wrong weight mapping
# is off by O(1).
RTOL = 1e-3
ATOL = 1e-5


class TorchElman(nn.Module):
    """torch.nn.RNN (tanh) and a linear readout of every step."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(n, m, batch_first=True)
        self.readout = nn.Linear(m, n)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.rnn(x)
        return self.readout(hidden)


class TorchLSTM(nn.Module):
    """torch.nn.LSTM, returning the hidden state of every step."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n, m, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)
        return hidden


class TorchGRU2(nn.Module):
    """torch.nn.GRU with two layers, returning the upper layer's hidden state of every step."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n, m, num_layers=2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.gru(x)
        return hidden


def _bias(tensors: dict[str, Tensor], ih: str, hh: str, grads: bool) -> Tensor:
    """The one bias of a machine's linear for torch's two: their sum; for gradients, one
    of them (both get the same gradient, which is the gradient of their sum)."""
    return tensors[ih] if grads else tensors[ih] + tensors[hh]


def elman_as_generated(tensors: dict[str, Tensor], grads: bool = False) -> dict[str, Tensor]:
    """TorchElman's parameters (or, with ``grads``, their gradients) laid out as the
    generated Elman's: ``cell`` is one linear over ``x × h[t-1]``, weight
    ``[W_ih | W_hh]``, bias ``b_ih + b_hh``."""
    return {
        "cell.weight": torch.cat([tensors["rnn.weight_ih_l0"], tensors["rnn.weight_hh_l0"]], 1),
        "cell.bias": _bias(tensors, "rnn.bias_ih_l0", "rnn.bias_hh_l0", grads),
        "read.weight": tensors["readout.weight"],
        "read.bias": tensors["readout.bias"],
    }


def lstm_as_generated(tensors: dict[str, Tensor], grads: bool = False) -> dict[str, Tensor]:
    """TorchLSTM's parameters (or gradients) laid out as the generated LSTM's.

    ``nn.LSTM``'s gate rows are (input, forget, cell, output); the machine's
    ``gates`` edge writes ``i × fg × o`` and ``cand`` writes ``g``, each a linear
    over ``x × h[t-1]`` with one bias.
    """
    w_ih, w_hh = tensors["lstm.weight_ih_l0"], tensors["lstm.weight_hh_l0"]
    bias = _bias(tensors, "lstm.bias_ih_l0", "lstm.bias_hh_l0", grads)
    m = w_hh.shape[1]
    i, f, g, o = (slice(k * m, (k + 1) * m) for k in range(4))
    return {
        "gates.weight": torch.cat([torch.cat([w_ih[r], w_hh[r]], 1) for r in (i, f, o)]),
        "gates.bias": torch.cat([bias[r] for r in (i, f, o)]),
        "cand.weight": torch.cat([w_ih[g], w_hh[g]], 1),
        "cand.bias": bias[g],
    }


def gru2_as_generated(tensors: dict[str, Tensor], grads: bool = False) -> dict[str, Tensor]:
    """TorchGRU2's parameters (or gradients) laid out as the generated GRU2's.

    Per layer (``lower``, ``upper``), ``nn.GRU``'s gate rows are (reset, update, new):
    ``gates`` is one linear over ``x × h[t-1]`` writing ``r × z`` (bias: both of torch's
    summed), ``read`` the new gate's linear on ``x`` (``b_in``) and ``recall`` on
    ``h[t-1]`` (``b_hn``, which ``r`` multiplies, so it stays apart).
    """
    out = {}
    for layer, edge in enumerate(("lower", "upper")):
        w_ih, w_hh = tensors[f"gru.weight_ih_l{layer}"], tensors[f"gru.weight_hh_l{layer}"]
        b_ih, b_hh = tensors[f"gru.bias_ih_l{layer}"], tensors[f"gru.bias_hh_l{layer}"]
        m = w_hh.shape[1]
        rz, n = slice(0, 2 * m), slice(2 * m, 3 * m)
        out[f"{edge}.gates.weight"] = torch.cat([w_ih[rz], w_hh[rz]], 1)
        out[f"{edge}.gates.bias"] = b_ih[rz] if grads else b_ih[rz] + b_hh[rz]
        out[f"{edge}.read.weight"] = w_ih[n]
        out[f"{edge}.read.bias"] = b_ih[n]
        out[f"{edge}.recall.weight"] = w_hh[n]
        out[f"{edge}.recall.bias"] = b_hh[n]
    return out


@dataclass
class Case:
    """One model: the generated module, its torch.nn counterpart and an input."""

    name: str
    sizes: str
    generated: nn.Module
    reference: nn.Module
    as_generated: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    x: Tensor

    @property
    def variants(self) -> dict[str, nn.Module]:
        return {"generated": self.generated, "torch": self.reference}


def build(name: str, n: int, m: int, batch: int, steps: int, cells: bool = True) -> Case:
    """The generated module with the weights of a freshly initialised torch module
    (``cells``: with the rewrite cells, PyTorch's fused kernel; else the step loop)."""
    params, rewrites = {"n": n, "m": m}, None if cells else ()
    if name == "elman":
        module = machc.load(EXAMPLES / "elman.mach", params=params, rewrites=rewrites)
        generated, reference = module.Elman(), TorchElman(n, m)
        as_generated, label = elman_as_generated, "torch.nn.RNN"
    elif name == "lstm":
        module = machc.load(EXAMPLES / "lstm.mach", params=params, rewrites=rewrites)
        generated, reference = module.LSTM(), TorchLSTM(n, m)
        as_generated, label = lstm_as_generated, "torch.nn.LSTM"
    else:
        module = machc.load(HERE / "gru2.mach", params=params, rewrites=rewrites)
        generated, reference = module.GRU2(), TorchGRU2(n, m)
        as_generated, label = gru2_as_generated, "torch.nn.GRU(num_layers=2)"
    weights = as_generated(dict(reference.named_parameters()))
    params = dict(generated.named_parameters())
    assert set(weights) == set(params), (sorted(weights), sorted(params))
    with torch.no_grad():
        for key, value in weights.items():
            assert params[key].shape == value.shape, (key, params[key].shape, value.shape)
            params[key].copy_(value)
    sizes = f"n={n} m={m} vs {label}" + ("" if cells else " (--no-cells: the step loop)")
    return Case(name, sizes, generated, reference, as_generated, torch.randn(batch, steps, n))


def check_agreement(case: Case) -> dict[str, float]:
    """Fail loudly unless both variants give the same outputs and gradients.

    Returns the largest absolute differences (output, and over all gradients).
    """
    results = {}
    for name, module in case.variants.items():
        module.zero_grad(set_to_none=True)
        out = module(case.x)
        out.square().mean().backward()
        grads = {k: p.grad.detach().clone() for k, p in module.named_parameters()}
        module.zero_grad(set_to_none=True)
        results[name] = (out.detach(), grads)
    out, grads = results["generated"]
    ref_out, ref_grads = results["torch"]
    torch.testing.assert_close(
        out, ref_out, rtol=RTOL, atol=ATOL, msg=lambda m: f"{case.name} outputs disagree: {m}"
    )
    mapped = case.as_generated(ref_grads, grads=True)
    assert set(mapped) == set(grads), (sorted(mapped), sorted(grads))
    for key, grad in grads.items():
        # Gradients summed over steps: scale the absolute tolerance by their size.
        scale = max(mapped[key].abs().max().item(), 1e-30)
        torch.testing.assert_close(
            grad,
            mapped[key],
            rtol=RTOL,
            atol=ATOL * max(scale, 1.0),
            msg=lambda m, key=key: f"{case.name} gradient of {key} disagrees: {m}",
        )
    return {
        "output": (out - ref_out).abs().max().item(),
        "gradients": max((grads[k] - mapped[k]).abs().max().item() for k in grads),
    }


def measure(case: Case, repeats: int, iterations: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per iteration of each variant, one sample per repeat, interleaved."""
    variants = case.variants
    for mod in variants.values():
        for _ in range(warmup):
            step(mod, case.x)
    orders = list(itertools.permutations(variants))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            mod = variants[name]
            samples[name].append(time_per_iteration(lambda mod=mod: step(mod, case.x), iterations))
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, object]:
    """Median, min and max ms per iteration; generated / torch per repeat and of the medians."""
    median_ms = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    return {
        "median_ms": median_ms,
        "min_ms": {name: 1000 * min(s) for name, s in samples.items()},
        "max_ms": {name: 1000 * max(s) for name, s in samples.items()},
        "samples_ms": {name: [1000 * t for t in s] for name, s in samples.items()},
        "generated_over_torch": statistics.median(
            g / t for g, t in zip(samples["generated"], samples["torch"], strict=True)
        ),
        "generated_over_torch_of_medians": median_ms["generated"] / median_ms["torch"],
        "noisy": any(
            statistics.median(s) > NOISY_MEDIAN_OVER_MIN * min(s) for s in samples.values()
        ),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke sizes (for tests)")
    parser.add_argument("--steps", type=int, help="sequence length (default 1000)")
    parser.add_argument("--batch", type=int, help="batch size (default 32)")
    parser.add_argument("--repeats", type=int, help="timed repeats per variant (default 20)")
    parser.add_argument("--iterations", type=int, help="iterations per repeat (default 1)")
    parser.add_argument("--warmup", type=int, help="warm-up iterations per variant (default 2)")
    parser.add_argument("--elman-n", type=int, help="Elman input/output size n (default 16)")
    parser.add_argument("--elman-m", type=int, help="Elman hidden size m (default 64)")
    parser.add_argument("--lstm-n", type=int, help="LSTM input size n (default 32)")
    parser.add_argument("--lstm-m", type=int, help="LSTM hidden size m (default 128)")
    parser.add_argument("--gru2-n", type=int, help="GRU2 input size n (default 32)")
    parser.add_argument("--gru2-m", type=int, help="GRU2 hidden size m (default 128)")
    parser.add_argument(
        "--no-cells",
        action="store_true",
        help="compile without the rewrite cells: the step loop, not PyTorch's fused kernel",
    )
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to run"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(getattr(args, key) for key in DEFAULTS if key != "warmup") < 1 or args.warmup < 0:
        parser.error("sizes, steps, batch, repeats and iterations must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"recurrent machines: batch={args.batch} steps={args.steps}; "
        f"torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats x {args.iterations} iterations, {args.warmup} warm-up; "
        "ms per forward+backward iteration"
    )
    report: dict[str, object] = {
        "benchmark": "recurrent",
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "cells": not args.no_cells,
        **environment(threads),
        "models": {},
    }
    for name in args.models:
        torch.manual_seed(args.seed)
        n, m = getattr(args, f"{name}_n"), getattr(args, f"{name}_m")
        case = build(name, n, m, args.batch, args.steps, cells=not args.no_cells)
        diffs = check_agreement(case)
        figures = summarise(measure(case, args.repeats, args.iterations, args.warmup))
        ratio = figures["generated_over_torch"]
        target = TARGETS.get(name)
        met = None if target is None else ratio <= target
        print()
        print(f"{name}: {case.sizes}")
        print(
            f"outputs and gradients agree (checked before timing; max abs diff "
            f"{diffs['output']:.1e} outputs, {diffs['gradients']:.1e} gradients)"
        )
        print(f"{'variant':<10} {'median ms/iter':>15} {'min':>9} {'max':>9}")
        for variant in case.variants:
            print(
                f"{variant:<10} {figures['median_ms'][variant]:>15.2f} "
                f"{figures['min_ms'][variant]:>9.2f} {figures['max_ms'][variant]:>9.2f}"
            )
        verdict = "" if target is None else f"; target <= {target}: {'met' if met else 'NOT met'}"
        print(
            f"generated / torch = {ratio:.3f} per repeat "
            f"({figures['generated_over_torch_of_medians']:.3f} of the medians){verdict}"
        )
        if figures["noisy"]:
            print(
                f"warning: a median is over {NOISY_MEDIAN_OVER_MIN}x its minimum, so the machine "
                "was busy; absolute times are unreliable (ratios less so)."
            )
        report["models"][name] = {
            "n": n,
            "m": m,
            "max_abs_diff": diffs,
            "target_generated_over_torch": target,
            "target_met": met,
            **figures,
        }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
