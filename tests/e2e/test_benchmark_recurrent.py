"""benchmarks/recurrent.py keeps working: tiny sizes, agreement checked, timings never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_recurrent_benchmark_runs_and_checks_agreement(
    benchmark_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert (
        benchmark_script("recurrent").main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("outputs and gradients agree") == 3
    assert "elman: n=4 m=6 vs torch.nn.RNN" in printed
    assert "lstm: n=5 m=7 vs torch.nn.LSTM" in printed
    assert "gru2: n=5 m=7 vs torch.nn.GRU(num_layers=2)" in printed
    assert "generated / torch" in printed
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"elman", "lstm", "gru2"}
    assert report["cells"] is True
    for figures in report["models"].values():
        assert len(figures["samples_ms"]["generated"]) == len(figures["samples_ms"]["torch"]) == 2


def test_the_step_loop_form_runs_and_checks_agreement(
    benchmark_script, capsys: pytest.CaptureFixture[str]
) -> None:
    script = benchmark_script("recurrent")
    assert script.main(["--quick", "--no-cells", "--models", "gru2", "--repeats", "1"]) == 0
    assert "(--no-cells: the step loop)" in capsys.readouterr().out


def test_a_wrong_weight_mapping_is_caught(benchmark_script) -> None:
    script = benchmark_script("recurrent")
    case = script.build("lstm", 3, 4, batch=2, steps=5)
    with torch.no_grad():
        case.generated.cand.bias.add_(0.5)
    with pytest.raises(AssertionError, match="lstm outputs disagree"):
        script.check_agreement(case)
