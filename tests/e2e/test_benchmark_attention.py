"""benchmarks/attention.py keeps working: tiny sizes, agreement checked, timings never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_attention_benchmark_runs_and_checks_agreement(
    benchmark_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert (
        benchmark_script("attention").main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "encoder: d=16 heads=2 hidden=64" in printed
    assert "outputs and gradients agree" in printed
    assert "ran without its fast path" in printed
    assert "generated / torch = " in printed
    assert "cached and recomputed logits agree at every L" in printed
    assert "recompute / cached = " in printed
    report = json.loads(out.read_text())
    encoder = report["encoder"]
    assert len(encoder["samples_ms"]["generated"]) == len(encoder["samples_ms"]["torch"]) == 2
    assert [row["length"] for row in report["decode"]["per_token"]] == [4, 8]
    assert report["decode"]["generate"]["recompute_over_cached"] > 0


def test_a_wrong_weight_is_caught(benchmark_script) -> None:
    script = benchmark_script("attention")
    torch.manual_seed(0)
    case = script.build_encoder(8, 2, batch=2, steps=5)
    with torch.no_grad():
        case.generated.norm1.bias.add_(0.5)
    with pytest.raises(AssertionError, match="encoder outputs disagree"):
        script.check_encoder(case)


def test_the_fast_path_would_be_seen(benchmark_script) -> None:
    """In eval mode without grad torch's layer takes its fused path, and the check sees it."""
    script = benchmark_script("attention")
    torch.manual_seed(0)
    case = script.build_encoder(8, 2, batch=2, steps=5)
    case.reference.eval()
    with torch.no_grad():
        ops = script.torch_ops(case.reference, case.x, backward=False)
    assert ops & script.FAST_PATH_OPS
