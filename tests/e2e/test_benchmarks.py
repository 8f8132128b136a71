"""The benchmark scripts keep working (tiny sizes; timings are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dense_benchmark_runs_and_checks_agreement(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = "--depth 3 --width 8 --batch 4 --repeats 2 --iterations 1 --warmup 1 --threads 1"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dense.py"), *args.split(), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "agree" in run.stdout
    assert "generated / hand-written" in run.stdout
    assert json.loads(out.read_text())


def test_conv_benchmark_runs_and_checks_agreement(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = (
        "--blocks 3 --channels 4 --size 8 --batch 2 --repeats 2 --iterations 1 --warmup 1 "
        "--threads 1 --naive"
    )
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "conv.py"), *args.split(), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "agree" in run.stdout
    assert "generated / hand-written" in run.stdout
    figures = json.loads(out.read_text())
    assert set(figures["median_ms"]) == {"generated", "no-regroup", "hand-written", "naive"}
    # What forward keeps for the backward is measured (a figure, like the times).
    assert figures["kept_mib"]["generated"] > 0
    # and the page faults of each variant (counted, never judged)
    assert set(figures["faults_per_iteration"]) == set(figures["median_ms"])
    assert "faults/iter" in run.stdout


def test_densenet_bc_benchmark_runs_and_checks_agreement(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = "--layers 3 --k 4 --channels 8 --size 8 --batch 2 --repeats 2 --warmup 1 --threads 1"
    script = ROOT / "benchmarks" / "densenet_bc.py"
    run = subprocess.run(
        [sys.executable, str(script), *args.split(), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "agree" in run.stdout
    figures = json.loads(out.read_text())
    assert set(figures["median_ms"]) == {"generated", "no-regroup", "hand-written", "checkpointed"}
    # the generated block's forward keeps less than the plain form's
    assert figures["kept_mib"]["generated"] < figures["kept_mib"]["no-regroup"]
    assert set(figures["faults_per_iteration"]) == set(figures["median_ms"])


def test_sizes_benchmark_runs_and_checks_agreement() -> None:
    args = "--size 8 --batch 1 --rounds 4"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sizes.py"), *args.split()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "symbolic / fixed = " in run.stdout and "(outputs agree)" in run.stdout


def test_siblings_benchmark_runs_and_checks_agreement(benchmark_script, capsys) -> None:
    script = benchmark_script("siblings")
    assert script.main(["--repeats", "1", "--iterations", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[-3:] == ["fused", "/", "separate"]
    rows = printed[2:]
    assert len(rows) == len(script.SHAPES)
    assert all(float(row.split()[-1]) > 0 for row in rows)
