"""Benchmark: the deep equilibrium model of examples/deq.mach, its backward modes and solvers.

``DEQ`` from ``examples/deq.mach`` (``z`` the fixed point of ``z = tanh(W [z, u] +
b)``, ``u = inject(x)``, ``y = head(z)``; input n=64, default width w=128) is
compiled several times, each time with the file's ``solve z with ...`` line
replaced (the text is edited and loaded from a temporary file, as ``conv.py``
does; the example itself is not changed). Two parts, in one run:

- ``backward``: the implicit backward (the adjoint equation, solved in the
  backward) against the unrolled one (autograd through every iteration), with
  ``solve z with fixed_point(tol=1e-12, max_iter=K, backward=...)`` for K = 10,
  30 and 100 (default): the tolerance is out of reach in float32, so the forward
  solve, and the implicit backward's adjoint solve, run exactly K iterations (the
  script checks it). Before any timing, both modes must give the same outputs and
  parameter gradients at K = 200 (converged); at each K the script also prints how
  far apart their gradients are (both truncate at K, at different points). Per K:
  the time of one forward+backward iteration (``zero_grad``, forward, ``loss =
  out.square().mean()``, ``backward``; the iteration of ``dense.py``), the two
  variants interleaved across repeats as in ``recurrent.py`` (medians, and the
  median of the per-repeat ratios unrolled / implicit, the ratio of the medians
  beside it), and the activations saved for backward, as in ``conv.py``: the
  bytes of the distinct storages of the tensors autograd packs through
  ``torch.autograd.graph.saved_tensors_hooks`` during one forward and loss
  (parameters excluded), and of those still held when the forward ends (see
  ``saved_bytes``).
- ``solvers``: iterations to reach ``tol`` (1e-4 and 1e-6 by default) for
  ``fixed_point``, ``anderson`` and ``broyden`` (each with its default options,
  ``max_iter=500``), over a few batches of random inputs, in eval mode: the mean
  number of forward iterations (and of the implicit backward's, from one
  forward+backward per batch), and the wall time of the forward solve
  (``torch.no_grad``; the solvers interleaved across repeats).

Weights: ``cell``'s weight is ``spectral_norm``-ed in the example, so the script
sets its unnormalised weight to ``[A | B]`` (``A`` on ``z``, ``B`` on ``u``)
with every singular value 1, which spectral_norm leaves as it is (checked), and
``A`` of spectral radius ``--radius`` (0.9): ``symmetric``, ``A = Q diag(l) Q^T``
with ``l`` evenly spaced in [-0.9, 0.9] (real eigenvalues) and ``B = Q
diag(sqrt(1 - l^2)) P^T``; ``orthogonal``, ``A = 0.9 Q``, ``B = sqrt(1 - 0.81)
P`` (eigenvalues on the circle of radius 0.9, as a random matrix's fill a disk);
``Q``, ``P`` random orthogonal. ``z -> tanh(A z + ...)`` then contracts by at
most 0.9, slowly. The other weights keep their default initialisation. The
backward part uses the symmetric weights. Also printed: the spectral radius of
the Jacobian ``diag(1 - z*^2) A`` at the fixed point (mean over the first
batch), the rate at which plain iteration converges.

Solvers that do not reach ``tol`` warn (``RuntimeWarning``, once per module);
the script silences those warnings and reports convergence in its tables.
Timings are printed, never asserted. Run from anywhere:
``.venv/bin/python benchmarks/equilibrium.py [--threads 1 --repeats 10 ...]``;
``--quick`` is a tiny smoke configuration (any explicit flag still wins).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import machc
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import interleaved  # noqa: E402
from dense import NOISY_MEDIAN_OVER_MIN, environment, step, warn_if_busy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEQ_MACH = REPO / "examples" / "deq.mach"
SOLVE_LINE = re.compile(r"^(?P<indent>[ \t]*)solve z with .*$", re.M)

PARTS = ("backward", "solvers")
SOLVERS = ("fixed_point", "anderson", "broyden")
SPECTRA = ("symmetric", "orthogonal")
BACKWARDS = ("implicit", "unrolled")
UNREACHABLE_TOL = 1e-12  # float32 residuals stop near 1e-7: every iteration runs
# Before timing, both backward modes must agree once the solve has converged (200
# iterations of the contraction: to the float32 floor at the default and quick sizes).
AGREEMENT_ITERATIONS = 200
AGREEMENT_ATOL = 1e-5  # outputs, absolute
AGREEMENT_RTOL = 1e-4  # gradients, relative to the largest unrolled gradient of each parameter

DEFAULTS = {
    "batch": 64,
    "width": 128,
    "max_iters": [10, 30, 100],
    "tols": [1e-4, 1e-6],
    "solver_max_iter": 500,
    "batches": 4,
    "repeats": 10,
    "iterations": 1,
    "warmup": 2,
}
QUICK = {
    "batch": 4,
    "width": 16,
    "max_iters": [2, 5, 10],
    "tols": [1e-4, 1e-6],
    "solver_max_iter": 500,
    "batches": 2,
    "repeats": 2,
    "iterations": 1,
    "warmup": 1,
}


def deq_source(solve: str) -> str:
    """examples/deq.mach with its ``solve z with ...`` line replaced by ``solve``."""
    text = DEQ_MACH.read_text(encoding="utf-8")
    new, count = SOLVE_LINE.subn(lambda m: m["indent"] + solve, text)
    if count != 1:
        raise AssertionError(
            f"{DEQ_MACH} no longer has exactly one `solve z with ...` line (found {count})"
        )
    return new


def solve_line(solver: str, tol: float, max_iter: int, backward: str = "implicit") -> str:
    return f"solve z with {solver}(tol={tol:g}, max_iter={max_iter}, backward={backward})"


@functools.cache
def compile_deq(solve: str, width: int) -> type[nn.Module]:
    """The DEQ class compiled from examples/deq.mach with the solve line ``solve`` (each
    line compiled once per run)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deq.mach"
        path.write_text(deq_source(solve), encoding="utf-8")
        return machc.load(path, params={"w": width}).DEQ


def cell_weight(width: int, radius: float, spectrum: str, generator: torch.Generator) -> Tensor:
    """``[A | B]`` (``[width, 2 * width]``): every singular value 1, ``A`` of spectral radius
    ``radius``, with real eigenvalues (``symmetric``) or on a circle (``orthogonal``)."""
    if not 0 < radius < 1:
        raise ValueError(f"the radius must be in (0, 1), got {radius}")
    double = torch.float64
    q = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=double))[0]
    p = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=double))[0]
    if spectrum == "symmetric":
        lam = torch.linspace(-radius, radius, width, dtype=double)
        a = q @ torch.diag(lam) @ q.T
        b = q @ torch.diag((1 - lam.square()).sqrt()) @ p.T
    elif spectrum == "orthogonal":
        a, b = radius * q, (1 - radius**2) ** 0.5 * p
    else:
        raise ValueError(f"unknown spectrum {spectrum!r}; choose one of {', '.join(SPECTRA)}")
    return torch.cat([a, b], 1).float()


def weights(width: int, radius: float, spectrum: str, seed: int) -> dict[str, Tensor]:
    """A DEQ state dict: default initialisation, and ``cell_weight`` as cell's weight."""
    torch.manual_seed(seed)
    module = compile_deq(solve_line("fixed_point", 1e-4, 10), width)()
    weight = cell_weight(width, radius, spectrum, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        module.cell.parametrizations.weight.original.copy_(weight)
        normalised = module.cell.weight  # spectral_norm's weight (one power iteration)
    torch.testing.assert_close(
        normalised,
        weight,
        rtol=1e-4,
        atol=1e-5,
        msg=lambda m: f"spectral_norm changed the weight set for cell: {m}",
    )
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build(solve: str, state: dict[str, Tensor], width: int) -> nn.Module:
    module = compile_deq(solve, width)()
    module.load_state_dict(state)
    return module


@torch.no_grad()
def jacobian_radius(module: nn.Module, x: Tensor) -> float:
    """The mean over samples of the spectral radius of ``dfn/dz = diag(1 - z*^2) A`` at the
    fixed point ``z*`` (from the module's ``resolvent``): the rate at which plain
    iteration converges near it."""
    z = module.resolvent({"x": x})["z"]
    a = module.cell.weight[:, : z.shape[1]]
    jac = (1 - z.square())[:, :, None] * a  # [batch, w, w]
    return torch.linalg.eigvals(jac.double()).abs().amax(1).mean().item()


def saved_bytes(module: nn.Module, x: Tensor) -> dict[str, int]:
    """Activations autograd saves for backward in one forward+loss (parameters excluded):

    ``packed``, the bytes of the distinct storages of every tensor packed through
    ``saved_tensors_hooks`` (each storage is held until the count is taken, so a
    freed one's address is never counted twice); ``held``, those of the packed
    tensors still alive when the forward ends, i.e. kept for backward (in the
    unrolled mode, the graph of each iteration's residual is freed when the solve
    ends). The pack hook returns ``t.detach()``, not ``t``: a tensor that saves its
    own output would otherwise hold itself through its grad_fn (a reference cycle
    that keeps the graph alive, also after backward).
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, torch.UntypedStorage] = {}
    packed: list[weakref.ref] = []

    def pack(t: Tensor) -> Tensor:
        saved = t.detach()
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage
            packed.append(weakref.ref(saved))
        return saved

    module.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module(x).square().mean()
    alive = [t for t in (ref() for ref in packed) if t is not None]
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}
    figures = {"packed": sum(s.nbytes() for s in storages.values()), "held": sum(held.values())}
    del alive
    loss.backward()
    module.zero_grad(set_to_none=True)
    return figures


def compare(variants: dict[str, nn.Module], x: Tensor, max_iter: int) -> dict[str, float]:
    """One forward+backward of each mode; fail loudly unless every solve ran exactly
    ``max_iter`` iterations. Returns how far apart the modes are: the largest absolute
    difference of the outputs, and over the parameters the largest difference of the
    gradients relative to the largest unrolled gradient (both modes truncate at
    ``max_iter``, at different points, so they differ until both have converged)."""
    results = {}
    for name, module in variants.items():
        module.zero_grad(set_to_none=True)
        out = module(x)
        out.square().mean().backward()
        solve = module.solve_z
        counts = [solve.iterations]
        if name == "implicit":
            counts.append(solve.backward_iterations)
        if counts != [max_iter] * len(counts):
            raise AssertionError(
                f"{name} backward at max_iter={max_iter}: the solves ran {counts} iterations"
            )
        grads = {k: p.grad for k, p in module.named_parameters()}
        missing = sorted(k for k, g in grads.items() if g is None)
        if missing:
            raise AssertionError(f"{name} backward gave no gradient for {missing}")
        results[name] = (out.detach(), grads)
        module.zero_grad(set_to_none=True)
    (out, grads), (ref_out, ref_grads) = results["implicit"], results["unrolled"]
    return {
        "output": (out - ref_out).abs().max().item(),
        "gradients": max(
            ((grads[k] - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            for k, ref in ref_grads.items()
        ),
    }


def check_agreement(state: dict[str, Tensor], width: int, x: Tensor) -> dict[str, float]:
    """Fail loudly unless both modes give the same outputs and gradients once the solve
    has converged (``AGREEMENT_ITERATIONS`` iterations, to the float32 floor)."""
    variants = {
        backward: build(
            solve_line("fixed_point", UNREACHABLE_TOL, AGREEMENT_ITERATIONS, backward),
            state,
            width,
        )
        for backward in BACKWARDS
    }
    diffs = compare(variants, x, AGREEMENT_ITERATIONS)
    if diffs["output"] > AGREEMENT_ATOL or diffs["gradients"] > AGREEMENT_RTOL:
        raise AssertionError(
            f"implicit and unrolled backward disagree at max_iter={AGREEMENT_ITERATIONS}: "
            f"outputs by {diffs['output']:.2e}, gradients by {diffs['gradients']:.2e} (relative)"
        )
    return diffs


def ratio_figures(samples: dict[str, list[float]], over: str, under: str) -> dict[str, object]:
    """Medians, minima (ms) and ``over / under`` per repeat and of the medians."""
    median = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    return {
        "median_ms": median,
        "min_ms": {name: 1000 * min(s) for name, s in samples.items()},
        "samples_ms": {name: [1000 * t for t in s] for name, s in samples.items()},
        "ratio": statistics.median(
            a / b for a, b in zip(samples[over], samples[under], strict=True)
        ),
        "ratio_of_medians": median[over] / median[under],
        "noisy": any(
            statistics.median(s) > NOISY_MEDIAN_OVER_MIN * min(s) for s in samples.values()
        ),
    }


def run_backward(args: argparse.Namespace, report: dict) -> None:
    state = weights(args.width, args.radius, "symmetric", args.seed)
    torch.manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 64)
    print()
    print(
        f"backward: implicit vs unrolled, fixed_point(tol={UNREACHABLE_TOL:g}, max_iter=K), "
        f"batch={args.batch} width={args.width}, symmetric weights (radius {args.radius})"
    )
    agreement = check_agreement(state, args.width, x)
    rows = []
    noisy = False
    for max_iter in args.max_iters:
        variants = {
            backward: build(
                solve_line("fixed_point", UNREACHABLE_TOL, max_iter, backward), state, args.width
            )
            for backward in BACKWARDS
        }
        gap = compare(variants, x, max_iter)
        saved = {name: saved_bytes(module, x) for name, module in variants.items()}
        fns: dict[str, Callable[[], object]] = {
            name: lambda module=module: step(module, x) for name, module in variants.items()
        }
        figures = ratio_figures(
            interleaved(fns, args.repeats, args.iterations, args.warmup), "unrolled", "implicit"
        )
        noisy = noisy or figures["noisy"]
        rows.append(
            {
                "max_iter": max_iter,
                "difference": gap,
                "saved_bytes": saved,
                "saved_unrolled_over_implicit": {
                    kind: saved["unrolled"][kind] / saved["implicit"][kind]
                    for kind in ("packed", "held")
                },
                **figures,
            }
        )
    print(
        f"outputs and gradients of the two modes agree at K={AGREEMENT_ITERATIONS} (checked "
        f"before timing; max abs diff {agreement['output']:.1e} outputs, "
        f"{agreement['gradients']:.1e} gradients relative to the largest)"
    )
    print("every solve ran exactly K iterations (forward, and the implicit adjoint solve)")
    print(
        "ms per forward+backward iteration, median (min); unrolled / implicit per repeat "
        "(of the medians in brackets); grad diff: the modes' gradients apart at K (relative)"
    )
    print(
        f"{'K':>5} {'implicit':>18} {'unrolled':>18} {'unrolled / implicit':>20} {'grad diff':>10}"
    )
    for row in rows:
        med, low = row["median_ms"], row["min_ms"]
        implicit = f"{med['implicit']:.2f} ({low['implicit']:.2f})"
        unrolled = f"{med['unrolled']:.2f} ({low['unrolled']:.2f})"
        ratio = f"{row['ratio']:.2f} ({row['ratio_of_medians']:.2f})"
        gap = row["difference"]["gradients"]
        print(f"{row['max_iter']:>5} {implicit:>18} {unrolled:>18} {ratio:>20} {gap:>10.1e}")
    print(
        "saved activations, KiB: packed for backward during one forward (held at its end, "
        "after the solve's own temporaries are freed)"
    )
    print(f"{'K':>5} {'implicit':>20} {'unrolled':>20} {'unrolled / implicit':>20}")
    for row in rows:
        saved, ratio = row["saved_bytes"], row["saved_unrolled_over_implicit"]
        cells = [
            f"{saved[name]['packed'] / 1024:.1f} ({saved[name]['held'] / 1024:.1f})"
            for name in BACKWARDS
        ]
        times = f"{ratio['packed']:.1f} ({ratio['held']:.1f})"
        print(f"{row['max_iter']:>5} {cells[0]:>20} {cells[1]:>20} {times:>20}")
    warn_if_busy(noisy)
    report["backward"] = {
        "batch": args.batch,
        "width": args.width,
        "radius": args.radius,
        "spectrum": "symmetric",
        "tol": UNREACHABLE_TOL,
        "agreement": {"max_iter": AGREEMENT_ITERATIONS, "max_abs_diff": agreement},
        "rows": rows,
    }


def solver_stats(module: nn.Module, batches: list[Tensor]) -> dict[str, object]:
    """Forward iterations per batch (no grad), and the implicit backward's (one
    forward+backward per batch)."""
    forward, backward, converged, residual = [], [], 0, []
    for x in batches:
        with torch.no_grad():
            module(x)
        forward.append(module.solve_z.iterations)
        converged += module.solve_z.converged
        residual.append(module.solve_z.residual)
        step(module, x)
        backward.append(module.solve_z.backward_iterations)
    module.zero_grad(set_to_none=True)
    return {
        "iterations": forward,
        "mean_iterations": statistics.mean(forward),
        "converged": converged,
        "max_residual": max(residual),
        "backward_iterations": backward,
        "mean_backward_iterations": statistics.mean(backward),
    }


def run_solvers(args: argparse.Namespace, report: dict) -> None:
    torch.manual_seed(args.seed + 2)
    batches = [torch.randn(args.batch, 64) for _ in range(args.batches)]
    print()
    print(
        f"solvers: iterations to reach tol, max_iter={args.solver_max_iter}, "
        f"{args.batches} batches of {args.batch}, width={args.width}, radius {args.radius}; "
        "it: mean iterations of the forward solve (min-max), bwd it: of the implicit "
        "backward's; ms per forward solve (one batch, no grad), median (min)"
    )
    results = []
    noisy = False
    for spectrum in args.spectra:
        state = weights(args.width, args.radius, spectrum, args.seed)
        for tol in args.tols:
            modules = {
                solver: build(solve_line(solver, tol, args.solver_max_iter), state, args.width)
                for solver in args.solvers
            }
            for module in modules.values():
                module.eval()
            rho = jacobian_radius(next(iter(modules.values())), batches[0])
            stats = {name: solver_stats(module, batches) for name, module in modules.items()}

            def solve_all(module: nn.Module) -> None:
                with torch.no_grad():
                    for x in batches:
                        module(x)

            fns = {name: lambda m=m: solve_all(m) for name, m in modules.items()}
            samples = interleaved(fns, args.repeats, 1, args.warmup)
            noisy = noisy or any(
                statistics.median(s) > NOISY_MEDIAN_OVER_MIN * min(s) for s in samples.values()
            )
            for name in modules:
                per_solve = [t / len(batches) for t in samples[name]]
                median_ms = 1000 * statistics.median(per_solve)
                results.append(
                    {
                        "spectrum": spectrum,
                        "tol": tol,
                        "solver": name,
                        "jacobian_radius": rho,
                        **stats[name],
                        "median_ms": median_ms,
                        "min_ms": 1000 * min(per_solve),
                        "ms_per_iteration": median_ms / stats[name]["mean_iterations"],
                        "samples_ms": [1000 * t for t in per_solve],
                    }
                )
    print(
        f"{'weights':<11} {'rho(J)':>6} {'tol':>6} {'solver':<12} {'it':>6} {'(min-max)':>10} "
        f"{'conv':>5} {'bwd it':>7} {'ms':>9} {'(min)':>9} {'ms/it':>7}"
    )
    for row in results:
        its = row["iterations"]
        spread, low = f"({min(its)}-{max(its)})", f"({row['min_ms']:.2f})"
        print(
            f"{row['spectrum']:<11} {row['jacobian_radius']:>6.3f} {row['tol']:>6g} "
            f"{row['solver']:<12} {row['mean_iterations']:>6.1f} "
            f"{spread:>10} "
            f"{row['converged']:>2}/{len(its):<2} {row['mean_backward_iterations']:>7.1f} "
            f"{row['median_ms']:>9.2f} {low:>9} "
            f"{row['ms_per_iteration']:>7.3f}"
        )
    warn_if_busy(noisy)
    report["solvers"] = {
        "batch": args.batch,
        "batches": args.batches,
        "width": args.width,
        "radius": args.radius,
        "max_iter": args.solver_max_iter,
        "rows": results,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke sizes (for tests)")
    parser.add_argument("--batch", type=int, help="batch size (default 64)")
    parser.add_argument("--width", type=int, help="width w of u and z (default 128)")
    parser.add_argument(
        "--max-iters", type=int, nargs="+", help="backward: iterations K (default 10 30 100)"
    )
    parser.add_argument("--tols", type=float, nargs="+", help="solvers: tolerances (1e-4 1e-6)")
    parser.add_argument("--solver-max-iter", type=int, help="solvers: max_iter (default 500)")
    parser.add_argument("--batches", type=int, help="solvers: batches of inputs (default 4)")
    parser.add_argument("--repeats", type=int, help="timed repeats per variant (default 10)")
    parser.add_argument(
        "--iterations", type=int, help="backward: iterations per repeat (default 1)"
    )
    parser.add_argument("--warmup", type=int, help="warm-up calls per variant (default 2)")
    parser.add_argument(
        "--radius", type=float, default=0.9, help="spectral radius of cell's A (default 0.9)"
    )
    parser.add_argument(
        "--spectra", nargs="+", choices=SPECTRA, default=list(SPECTRA), help="solvers: weights"
    )
    parser.add_argument(
        "--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS), help="solvers to run"
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
    counts = [getattr(args, k) for k in DEFAULTS if k not in ("warmup", "max_iters", "tols")]
    if min(counts + args.max_iters) < 1 or args.warmup < 0:
        parser.error("sizes, iterations, batches and repeats must be positive")
    if min(args.tols) <= 0 or not 0 < args.radius < 1:
        parser.error("tolerances must be positive and the radius in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"equilibrium machines (examples/deq.mach): torch {torch.__version__}, {threads} threads; "
        f"{args.repeats} repeats, {args.warmup} warm-up"
    )
    report: dict[str, object] = {
        "benchmark": "equilibrium",
        "repeats": args.repeats,
        "iterations": args.iterations,
        "warmup": args.warmup,
        **environment(threads),
    }
    with warnings.catch_warnings():
        # Solves that stop at max_iter warn; here that is the point (backward) or a figure.
        warnings.filterwarnings("ignore", message="Solve: ", category=RuntimeWarning)
        if "backward" in args.parts:
            run_backward(args, report)
        if "solvers" in args.parts:
            run_solvers(args, report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
