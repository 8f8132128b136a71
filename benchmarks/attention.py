"""Benchmark: the generated attention machines against torch.nn, and the KV cache of GPT.

Two parts, in one run:

- ``encoder``: ``Encoder`` compiled from ``examples/encoder.mach`` (default d=256,
  8 heads, hidden 4*d=1024) against ``torch.nn.TransformerEncoderLayer(d, heads,
  4*d, dropout=0.0, activation="gelu", batch_first=True)`` on batch 32 of 128
  steps. The torch layer is built first and its weights copied into the
  generated one; outputs and parameter gradients are checked equal before any
  timing. One iteration is forward + backward (``zero_grad``, forward, ``loss =
  out.square().mean()``, ``backward``; the iteration of ``dense.py``), both
  modules in training mode (dropout is 0): torch's inference fast path
  (``_transformer_encoder_layer_fwd``, taken in eval mode without grad) is never
  used, and the script checks with ``torch.profiler`` that the torch layer ran
  its ordinary ops (``F.multi_head_attention_forward`` with
  ``scaled_dot_product_attention``). Timing as in ``recurrent.py`` (it imports
  its ``measure`` and ``summarise``): the two variants interleaved across
  repeats, medians, and the judged ratio generated / torch is the median of
  per-repeat ratios (target <= 1.05).
- ``decode``: ``GPT`` compiled from ``examples/gpt.mach`` (its defaults: vocab
  256, d 64, 4 heads, 2 layers, 256 positions), batch 1, in eval mode without
  grad. For a context of L tokens it times producing the logits of the L-th
  token two ways: ``cached``, one call on that token with ``state=`` (the keys
  and values of the L - 1 tokens before it, from an earlier call with
  ``return_state=True``); ``recompute``, one call on all L tokens without state
  (what decoding without a cache does at every token). The two logits are
  checked equal first. Also timed: generating a whole sequence token by token
  both ways.

Timings are printed, never asserted. Run from anywhere:
``.venv/bin/python benchmarks/attention.py [--threads 1 --repeats 20 ...]``;
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
from dense import (  # noqa: E402
    NOISY_MEDIAN_OVER_MIN,
    environment,
    time_per_iteration,
    warn_if_busy,
)
from recurrent import measure, summarise  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

TARGET_ENCODER = 1.05  # generated / torch must be at most this
PARTS = ("encoder", "decode")

DEFAULTS = {
    "batch": 32,
    "steps": 128,
    "d": 256,
    "heads": 8,
    "repeats": 20,
    "iterations": 1,
    "warmup": 2,
    "gpt_d": 64,
    "gpt_layers": 2,
    "prefixes": [32, 64, 128, 256],
    "decode_iterations": 10,
    "generate": 256,
}
QUICK = {
    "batch": 2,
    "steps": 6,
    "d": 16,
    "heads": 2,
    "repeats": 2,
    "iterations": 1,
    "warmup": 1,
    "gpt_d": 16,
    "gpt_layers": 1,
    "prefixes": [4, 8],
    "decode_iterations": 1,
    "generate": 8,
}

# Agreement in float32: the same ops in a different order (one split of the projection
# against torch's chunks), so rounding differs a little; a wrong weight is off by O(1).
RTOL = 1e-4
ATOL = 1e-5

# The generated Encoder's parameters and the torch layer's they are copied from.
ENCODER_NAMES = {
    "proj.weight": "self_attn.in_proj_weight",
    "proj.bias": "self_attn.in_proj_bias",
    "attn.weight": "self_attn.out_proj.weight",
    "attn.bias": "self_attn.out_proj.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "up.weight": "linear1.weight",
    "up.bias": "linear1.bias",
    "down.weight": "linear2.weight",
    "down.bias": "linear2.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
# Ops of torch's fused inference paths (TransformerEncoderLayer's and MultiheadAttention's).
FAST_PATH_OPS = {"aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention"}


@dataclass
class EncoderCase:
    """The generated Encoder, the torch layer it copies, and an input (as recurrent.Case)."""

    sizes: str
    generated: nn.Module
    reference: nn.Module
    x: Tensor

    @property
    def variants(self) -> dict[str, nn.Module]:
        return {"generated": self.generated, "torch": self.reference}


def build_encoder(d: int, heads: int, batch: int, steps: int) -> EncoderCase:
    """The generated Encoder with the weights of a freshly initialised torch layer."""
    reference = nn.TransformerEncoderLayer(
        d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True
    )
    generated = machc.load(EXAMPLES / "encoder.mach", params={"d": d, "heads": heads}).Encoder()
    source = dict(reference.named_parameters())
    params = dict(generated.named_parameters())
    assert set(params) == set(ENCODER_NAMES), sorted(params)
    with torch.no_grad():
        for name, param in params.items():
            value = source[ENCODER_NAMES[name]]
            assert param.shape == value.shape, (name, param.shape, value.shape)
            param.copy_(value)
    # Training mode for both (dropout 0, so it changes nothing but torch's path choice).
    generated.train()
    reference.train()
    sizes = (
        f"d={d} heads={heads} hidden={4 * d}, batch={batch} steps={steps} "
        "vs torch.nn.TransformerEncoderLayer"
    )
    return EncoderCase(sizes, generated, reference, torch.randn(batch, steps, d))


def check_encoder(case: EncoderCase) -> dict[str, float]:
    """Fail loudly unless outputs and gradients agree; returns the largest differences."""
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
        out, ref_out, rtol=RTOL, atol=ATOL, msg=lambda m: f"encoder outputs disagree: {m}"
    )
    for key, grad in grads.items():
        ref = ref_grads[ENCODER_NAMES[key]]
        scale = max(ref.abs().max().item(), 1.0)
        torch.testing.assert_close(
            grad,
            ref,
            rtol=RTOL,
            atol=ATOL * scale,
            msg=lambda m, key=key: f"encoder gradient of {key} disagrees: {m}",
        )
    return {
        "output": (out - ref_out).abs().max().item(),
        "gradients": max(
            (grads[k] - ref_grads[ENCODER_NAMES[k]]).abs().max().item() for k in grads
        ),
    }


def torch_ops(module: nn.Module, x: Tensor, backward: bool = True) -> set[str]:
    """The names of the ops one forward (and backward) of ``module`` runs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        module.zero_grad(set_to_none=True)
        out = module(x)
        if backward:
            out.square().mean().backward()
    module.zero_grad(set_to_none=True)
    return {event.key for event in prof.key_averages()}


def run_encoder(args: argparse.Namespace, report: dict) -> None:
    torch.manual_seed(args.seed)
    case = build_encoder(args.d, args.heads, args.batch, args.steps)
    diffs = check_encoder(case)
    ops = torch_ops(case.reference, case.x)
    fast = sorted(ops & FAST_PATH_OPS)
    if fast or "aten::scaled_dot_product_attention" not in ops:
        raise AssertionError(f"torch's layer did not take its training path: {sorted(ops)}")
    figures = summarise(measure(case, args.repeats, args.iterations, args.warmup))
    ratio = figures["generated_over_torch"]
    met = ratio <= TARGET_ENCODER
    print()
    print(f"encoder: {case.sizes}; training mode, forward+backward")
    print(
        f"outputs and gradients agree (checked before timing; max abs diff "
        f"{diffs['output']:.1e} outputs, {diffs['gradients']:.1e} gradients); torch's layer "
        "ran without its fast path"
    )
    print(f"{'variant':<10} {'median ms/iter':>15} {'min':>9} {'max':>9}")
    for variant in case.variants:
        print(
            f"{variant:<10} {figures['median_ms'][variant]:>15.2f} "
            f"{figures['min_ms'][variant]:>9.2f} {figures['max_ms'][variant]:>9.2f}"
        )
    print(
        f"generated / torch = {ratio:.3f} per repeat "
        f"({figures['generated_over_torch_of_medians']:.3f} of the medians); "
        f"target <= {TARGET_ENCODER}: {'met' if met else 'NOT met'}"
    )
    warn_if_busy(figures["noisy"])
    report["encoder"] = {
        "d": args.d,
        "heads": args.heads,
        "hidden": 4 * args.d,
        "batch": args.batch,
        "steps": args.steps,
        "max_abs_diff": diffs,
        "target_generated_over_torch": TARGET_ENCODER,
        "target_met": met,
        **figures,
    }


def decode_calls(model: nn.Module, tokens: Tensor, length: int) -> dict[str, Callable[[], Tensor]]:
    """The logits of token ``length`` (1-based) of ``tokens``: with the cache, and recomputed."""
    prefix, new = tokens[:, : length - 1], tokens[:, length - 1 : length]
    _, state = model(prefix, return_state=True)

    def cached() -> Tensor:
        logits, _ = model(new, state=state, return_state=True)
        return logits[:, -1]

    def recompute() -> Tensor:
        return model(tokens[:, :length])[:, -1]

    return {"cached": cached, "recompute": recompute}


def generate(model: nn.Module, first: Tensor, total: int, cached: bool) -> Tensor:
    """``first`` ([batch, 1]) and greedy tokens after it up to ``total``, with or without the cache.

    Either way the model is called ``total - 1`` times.
    """
    tokens = first
    if cached:
        logits, state = model(first, return_state=True)
        while True:
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, token], 1)
            if tokens.shape[1] == total:
                return tokens
            logits, state = model(token, state=state, return_state=True)
    while tokens.shape[1] < total:
        token = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, token], 1)
    return tokens


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, iterations: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per repeat, orders alternating."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    orders = list(itertools.permutations(fns))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in orders[r % len(orders)]:
            samples[name].append(time_per_iteration(fns[name], iterations))
    return samples


def speedup(samples: dict[str, list[float]]) -> dict[str, float | bool]:
    """Medians and minima in ms, recompute / cached per repeat and of the medians."""
    median = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    return {
        "cached_ms": median["cached"],
        "recompute_ms": median["recompute"],
        "cached_min_ms": 1000 * min(samples["cached"]),
        "recompute_min_ms": 1000 * min(samples["recompute"]),
        "recompute_over_cached": statistics.median(
            r / c for r, c in zip(samples["recompute"], samples["cached"], strict=True)
        ),
        "recompute_over_cached_of_medians": median["recompute"] / median["cached"],
        "noisy": any(
            statistics.median(s) > NOISY_MEDIAN_OVER_MIN * min(s) for s in samples.values()
        ),
    }


@torch.no_grad()
def run_decode(args: argparse.Namespace, report: dict) -> None:
    torch.manual_seed(args.seed)
    positions = max(*args.prefixes, args.generate)
    params = {"GPT.d": args.gpt_d, "GPT.layers": args.gpt_layers, "GPT.ctx": positions}
    model = machc.load(EXAMPLES / "gpt.mach", params=params).GPT().eval()
    vocab = model.IDS["tok"]
    tokens = torch.randint(0, vocab, (1, positions))
    print()
    print(
        f"decode: GPT d={args.gpt_d} layers={args.gpt_layers} heads=4 vocab={vocab} "
        f"positions={positions}, batch 1, eval mode, no grad; ms per token"
    )
    print(
        "L: context length (the cache holds L - 1 tokens); cached: one call on the new token "
        "with state=; recompute: one call on all L tokens"
    )
    rows = []
    noisy = False
    for length in args.prefixes:
        fns = decode_calls(model, tokens, length)
        torch.testing.assert_close(
            fns["cached"](),
            fns["recompute"](),
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, length=length: f"cached logits disagree at L={length}: {m}",
        )
        figures = speedup(interleaved(fns, args.repeats, args.decode_iterations, args.warmup))
        noisy = noisy or figures["noisy"]
        rows.append({"length": length, **figures})
    print("cached and recomputed logits agree at every L (checked before timing)")
    print(
        f"{'L':>5} {'cached ms':>10} {'min':>7} {'recompute ms':>13} {'min':>7} "
        f"{'recompute / cached':>19}"
    )
    for row in rows:
        print(
            f"{row['length']:>5} {row['cached_ms']:>10.3f} {row['cached_min_ms']:>7.3f} "
            f"{row['recompute_ms']:>13.3f} {row['recompute_min_ms']:>7.3f} "
            f"{row['recompute_over_cached']:>9.2f} ({row['recompute_over_cached_of_medians']:.2f})"
        )

    first = tokens[:, :1]
    with_cache = generate(model, first, args.generate, cached=True)
    without = generate(model, first, args.generate, cached=False)
    if not torch.equal(with_cache, without):
        raise AssertionError("greedy generation differs with and without the cache")
    gen = {
        "cached": lambda: generate(model, first, args.generate, cached=True),
        "recompute": lambda: generate(model, first, args.generate, cached=False),
    }
    whole = speedup(interleaved(gen, max(2, args.repeats // 4), 1, 1 if args.warmup else 0))
    noisy = noisy or whole["noisy"]
    print(
        f"generating a sequence of {args.generate} tokens one by one from its first "
        "(greedy, the same tokens both ways): "
        f"cached {whole['cached_ms']:.1f} ms, recompute {whole['recompute_ms']:.1f} ms; "
        f"recompute / cached = {whole['recompute_over_cached']:.2f} per repeat "
        f"({whole['recompute_over_cached_of_medians']:.2f} of the medians)"
    )
    warn_if_busy(noisy)
    report["decode"] = {
        "d": args.gpt_d,
        "layers": args.gpt_layers,
        "positions": positions,
        "iterations": args.decode_iterations,
        "per_token": rows,
        "generate": {"tokens": args.generate, **whole},
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke sizes (for tests)")
    parser.add_argument("--batch", type=int, help="encoder: batch size (default 32)")
    parser.add_argument("--steps", type=int, help="encoder: sequence length (default 128)")
    parser.add_argument("--d", type=int, help="encoder: features (default 256)")
    parser.add_argument("--heads", type=int, help="encoder: attention heads (default 8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per variant (default 20)")
    parser.add_argument("--iterations", type=int, help="encoder: iterations per repeat (default 1)")
    parser.add_argument("--warmup", type=int, help="warm-up calls per variant (default 2)")
    parser.add_argument("--gpt-d", type=int, help="decode: GPT width (default 64)")
    parser.add_argument("--gpt-layers", type=int, help="decode: GPT blocks (default 2)")
    parser.add_argument(
        "--prefixes", type=int, nargs="+", help="decode: context lengths L (default 32 64 128 256)"
    )
    parser.add_argument(
        "--decode-iterations", type=int, help="decode: calls per repeat (default 10)"
    )
    parser.add_argument(
        "--generate", type=int, help="decode: length of the generated sequence (default 256)"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    positive = [getattr(args, k) for k in DEFAULTS if k not in ("warmup", "prefixes")]
    if min(positive) < 1 or args.warmup < 0 or min(args.prefixes) < 2:
        parser.error("sizes, repeats and iterations must be positive, and every L at least 2")
    if args.d % args.heads or args.gpt_d % 4:
        parser.error("--d must be a multiple of --heads, and --gpt-d of 4 (GPT's heads)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"attention machines: torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats, {args.warmup} warm-up"
    )
    report: dict[str, object] = {
        "benchmark": "attention",
        "repeats": args.repeats,
        "iterations": args.iterations,
        "warmup": args.warmup,
        **environment(threads),
    }
    if "encoder" in args.parts:
        run_encoder(args, report)
    if "decode" in args.parts:
        run_decode(args, report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
