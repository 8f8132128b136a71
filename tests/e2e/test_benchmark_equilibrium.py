"""benchmarks/equilibrium.py keeps working: tiny sizes, tables printed, timings never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_equilibrium_benchmark_runs_and_prints_its_tables(
    benchmark_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert (
        benchmark_script("equilibrium").main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "backward: implicit vs unrolled, fixed_point(tol=1e-12, max_iter=K)" in printed
    assert "outputs and gradients of the two modes agree at K=200" in printed
    assert "every solve ran exactly K iterations" in printed
    assert "    K           implicit           unrolled  unrolled / implicit  grad diff" in printed
    assert "saved activations, KiB" in printed
    assert "solvers: iterations to reach tol, max_iter=500" in printed
    assert "weights     rho(J)    tol solver" in printed
    for spectrum in ("symmetric", "orthogonal"):
        for solver in ("fixed_point", "anderson", "broyden"):
            assert f"{spectrum:<11}" in printed and f" {solver:<12}" in printed

    report = json.loads(out.read_text())
    assert report["benchmark"] == "equilibrium" and report["threads"] == 1
    agreement = report["backward"]["agreement"]["max_abs_diff"]
    assert agreement["gradients"] <= 1e-4 and agreement["output"] <= 1e-5

    # Implicit: the same activations at every K, all of them kept for backward.
    # Unrolled: more than implicit, and growing with K.
    rows = report["backward"]["rows"]
    assert [row["max_iter"] for row in rows] == [2, 5, 10]
    implicit = [row["saved_bytes"]["implicit"] for row in rows]
    unrolled = [row["saved_bytes"]["unrolled"] for row in rows]
    assert all(saved == implicit[0] for saved in implicit)
    assert implicit[0]["packed"] == implicit[0]["held"] > 0
    for kind in ("packed", "held"):
        assert unrolled[0][kind] > implicit[0][kind]
        assert unrolled[0][kind] < unrolled[1][kind] < unrolled[2][kind]
    assert all(saved["held"] <= saved["packed"] for saved in unrolled)
    # Truncated at K, the two modes' gradients differ, less with every K.
    gaps = [row["difference"]["gradients"] for row in rows]
    assert gaps[0] > gaps[1] > gaps[2] > agreement["gradients"]
    for row in rows:
        assert len(row["samples_ms"]["implicit"]) == len(row["samples_ms"]["unrolled"]) == 2
        assert row["ratio"] > 0 and row["median_ms"]["implicit"] > 0

    # Every solver reaches both tolerances; a tighter one takes more iterations; with a
    # real spectrum Anderson and Broyden take fewer than plain iteration.
    solvers = report["solvers"]["rows"]
    assert len(solvers) == 2 * 2 * 3
    found = {(r["spectrum"], r["tol"], r["solver"]): r for r in solvers}
    for (spectrum, tol, solver), row in found.items():
        assert row["converged"] == len(row["iterations"]) == 2
        assert 1 <= row["mean_iterations"] < 500 and row["mean_backward_iterations"] >= 1
        assert 0 < row["jacobian_radius"] < 0.9
        assert row["median_ms"] > 0
        if tol == 1e-4:
            assert row["mean_iterations"] < found[(spectrum, 1e-6, solver)]["mean_iterations"]
    for tol in (1e-4, 1e-6):
        plain = found[("symmetric", tol, "fixed_point")]["mean_iterations"]
        assert found[("symmetric", tol, "anderson")]["mean_iterations"] < plain
        assert found[("symmetric", tol, "broyden")]["mean_iterations"] < plain


@pytest.mark.parametrize("spectrum", ["symmetric", "orthogonal"])
def test_the_cell_weight_is_contractive_and_left_alone_by_spectral_norm(
    benchmark_script, spectrum: str
) -> None:
    script = benchmark_script("equilibrium")
    weight = script.cell_weight(12, 0.9, spectrum, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(
        torch.linalg.svdvals(weight), torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-5
    )
    radius = torch.linalg.eigvals(weight[:, :12]).abs().max().item()
    assert radius == pytest.approx(0.9, abs=1e-5)
    state = script.weights(12, 0.9, spectrum, seed=0)
    torch.testing.assert_close(
        state["cell.parametrizations.weight.original"].double(), weight, rtol=0, atol=0
    )


def test_the_solve_line_is_replaced(benchmark_script) -> None:
    script = benchmark_script("equilibrium")
    line = script.solve_line("fixed_point", 1e-12, 30, "unrolled")
    assert line == "solve z with fixed_point(tol=1e-12, max_iter=30, backward=unrolled)"
    source = script.deq_source(line)
    assert f"    {line}\n" in source and source.count("solve z with") == 1
    module = script.compile_deq(line, 8)()
    solve = module.solve_z
    assert (solve.solver, solve.tol, solve.max_iter, solve.backward) == (
        "fixed_point",
        1e-12,
        30,
        "unrolled",
    )


@pytest.mark.filterwarnings("ignore:Solve.*did not converge:RuntimeWarning")
def test_a_wrong_gradient_would_be_seen(benchmark_script) -> None:
    """``compare`` measures the modes apart: a changed weight in one of them shows."""
    script = benchmark_script("equilibrium")
    state = script.weights(8, 0.9, "symmetric", seed=0)
    torch.manual_seed(1)
    x = torch.randn(3, 64)
    variants = {
        backward: script.build(script.solve_line("fixed_point", 1e-12, 200, backward), state, 8)
        for backward in script.BACKWARDS
    }
    assert script.compare(variants, x, 200)["gradients"] <= script.AGREEMENT_RTOL
    with torch.no_grad():
        variants["implicit"].cell.bias.add_(0.5)
    assert script.compare(variants, x, 200)["gradients"] > 100 * script.AGREEMENT_RTOL
    with pytest.raises(AssertionError, match="the solves ran"):
        script.compare(variants, x, 100)
