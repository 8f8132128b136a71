"""benchmarks/compile_scale.py keeps working: tiny sizes, timings printed, never asserted."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest


def test_compile_scale_benchmark_runs(
    benchmark_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert benchmark_script("compile_scale").main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "| machine | edges | check s | compile s | peak MB | file MB | check peak MB |" in printed
    )
    for row in ("baseline (1 edge)", "chain 50", "chain 100", "dense 10", "dense 20"):
        assert f"| {row} |" in printed
    # The wide machines' generated modules were imported and run once.
    assert re.search(r"^\| wide 100 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", printed, re.M)
    for family in ("chain", "dense", "wide"):
        assert re.search(
            rf"^{family}: time ~ n\^-?[\d.]+ \(check\), n\^-?[\d.]+ \(compile\)", printed, re.M
        )
    report = json.loads(out.read_text())
    assert set(report["exponents"]) == {"chain", "dense", "wide"}
    rows = {(r["family"], r["n"]): r for r in report["rows"]}
    assert set(rows) == {
        ("baseline", 1),
        ("chain", 50),
        ("chain", 100),
        ("dense", 10),
        ("dense", 20),
        ("wide", 50),
        ("wide", 100),
    }
    for row in rows.values():
        assert row["check"]["status"] == row["compile"]["status"] == "ok"
        assert row["compile"]["peak_mb"] > 0 and row["file_mb"] > 0
    assert rows[("wide", 100)]["run"]["status"] == "ok"
    assert rows[("wide", 100)]["run"]["parameters"] == 100 * (4 * 4 + 4)


def test_a_timeout_and_a_refusal_are_reported_not_raised(benchmark_script, tmp_path: Path) -> None:
    script = benchmark_script("compile_scale")
    slow = script.run_process(
        [sys.executable, "-c", "import time; time.sleep(30)"], 0.5, tmp_path / "out.txt", tmp_path
    )
    assert slow.status == "timeout" and slow.seconds == 0.5
    mach = tmp_path / "bad.mach"
    mach.write_text("machine Bad {\n input x : 4\n output y : 4\n e : y -> x = linear\n}\n")
    refused = script.run_process(
        [sys.executable, "-m", "machc", "check", str(mach)], 60, tmp_path / "out.txt", tmp_path
    )
    assert refused.status == "error" and refused.returncode == 1
    assert ": error:" in refused.message


def test_the_growth_exponent_is_a_least_squares_slope(benchmark_script) -> None:
    slope = benchmark_script("compile_scale").slope
    assert slope([(10, 3.0), (100, 30.0), (1000, 300.0)]) == pytest.approx(1.0)
    assert slope([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)
    assert slope([(10, 1.0)]) is None


def test_the_loop_limit_can_be_raised_for_a_measurement(benchmark_script, tmp_path: Path) -> None:
    script = benchmark_script("compile_scale")
    mach = tmp_path / "chain.mach"
    mach.write_text(script.source("chain", 60))  # a loop of 59 iterations
    out = tmp_path / "out.txt"
    machc = script.machc_command(50)
    refused = script.run_process([*machc, "check", str(mach)], 60, out, tmp_path)
    assert refused.status == "error" and "more than 50 times in all" in refused.message
    machc = script.machc_command(100)
    assert script.run_process([*machc, "check", str(mach)], 60, out, tmp_path).status == "ok"
    assert "machine Chain" in out.read_text()
