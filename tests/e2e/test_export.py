"""``machc export --onnx``: a machine as an ONNX file, checked in onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import machc
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnxruntime  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def machc_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "machc", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> list:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in inputs.items()})


def test_export_checks_the_file_and_the_batch_is_dynamic(tmp_path: Path) -> None:
    out = tmp_path / "resnet.onnx"
    run = machc_cli("export", ROOT / "examples" / "resnet.mach", "--onnx", out)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}: machine ResNet, freshly initialised weights" in run.stdout
    assert "dynamic axes: batch" in run.stdout
    assert "onnxruntime equals eager: batch 2" in run.stdout and "batch 5" in run.stdout
    assert run.stderr == ""  # the exporter's own chatter stays off the terminal
    (got,) = run_onnx(out, {"img": torch.randn(7, 3, 32, 32)})
    assert got.shape == (7, 10)


def test_export_with_weights_computes_what_the_trained_module_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = machc.load(ROOT / "examples" / "dense.mach", params={"depth": 3}).DenseMachine()
    model.eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    out = tmp_path / "dense.onnx"
    args = ("--set", "depth=3", "--weights", tmp_path / "ckpt.pt", "--batch", "4")
    run = machc_cli("export", ROOT / "examples" / "dense.mach", "--onnx", out, *args)
    assert run.returncode == 0, run.stderr
    assert f"weights from {tmp_path / 'ckpt.pt'}" in run.stdout
    x = torch.randn(3, *model.SPACES["x"])
    (got,) = run_onnx(out, {"x": x})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "cls"), [("lstm.mach", "LSTM"), ("bielman.mach", "BiElman"), ("gpt.mach", "GPT")]
)
def test_a_machine_over_time_exports_with_a_dynamic_time(tmp_path: Path, name, cls) -> None:
    # a recurrence (forward and backward in time) is an ONNX Scan; attention needs no loop
    out = tmp_path / "model.onnx"
    run = machc_cli("export", ROOT / "examples" / name, "--onnx", out, "--steps", "5")
    assert run.returncode == 0, run.stderr
    assert "dynamic axes: batch, time\n" in run.stdout
    assert "onnxruntime equals eager: batch 2, 5 steps" in run.stdout
    assert "batch 5, 10 steps" in run.stdout
    torch.manual_seed(0)
    model = getattr(machc.load(ROOT / "examples" / name), cls)().eval()
    # the file's weights are fresh ones: check the shapes at lengths it never saw
    for steps in (1, 31):
        inputs = dict(zip(model.INPUTS, model.example_inputs(3, steps), strict=True))
        (got,) = run_onnx(out, inputs)
        assert got.shape[:2] == (3, steps)


STATEFUL_STEP = """
machine Cell over t {
    input  x : 4
    output h : 4
    c : x × h[t-1] -> h = linear | tanh
}
machine Outer over t {
    input  x : 4
    space  a : 4
    output y : 4
    e    : x × y[t-1] -> a = linear
    cell : a -> y = Cell
}
"""


def test_a_step_loop_that_carries_a_state_exports_at_one_length(tmp_path: Path) -> None:
    source = tmp_path / "outer.mach"
    source.write_text(STATEFUL_STEP)
    out = tmp_path / "outer.onnx"
    run = machc_cli("export", source, "--onnx", out, "--machine", "Outer", "--steps", "6")
    assert run.returncode == 0, run.stderr
    assert "dynamic axes: batch; time is fixed at 6 steps: a step loop is a Python loop" in (
        run.stdout
    )
    assert "batch 5, 6 steps" in run.stdout


def test_what_cannot_be_exported_is_said_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "deq.onnx"
    out.write_text("old")
    run = machc_cli("export", ROOT / "examples" / "deq.mach", "--onnx", out)
    assert run.returncode == 4
    assert run.stderr.startswith("machc: machine DEQ was not exported: torch.onnx.export failed")
    assert len(run.stderr.splitlines()) == 1
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["deq.onnx"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machine", "Nope"], "--machine Nope: "),
        (["--steps", "4"], "--steps: machine ResNet is not a machine over time"),
        (["--weights", "/nonexistent/ckpt.pt"], "no such file"),
        (["--batch", "0"], "must be from 1"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    run = machc_cli(
        "export", ROOT / "examples" / "resnet.mach", "--onnx", tmp_path / "o.onnx", *args
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "bad.pt")
    args = ("--weights", tmp_path / "bad.pt")
    run = machc_cli(
        "export", ROOT / "examples" / "resnet.mach", "--onnx", tmp_path / "o.onnx", *args
    )
    assert run.returncode == 2
    assert "does not fit machine ResNet" in run.stderr


def test_source_errors_are_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mach"
    bad.write_text("machine M { input x : 4 output y : 4 e : x -> y = lineer }\n")
    run = machc_cli("export", bad, "--onnx", tmp_path / "o.onnx")
    assert run.returncode == 1
    assert "bad.mach:1:" in run.stderr and "unknown op 'lineer'" in run.stderr


def test_export_keeps_sizes_known_at_call_time_dynamic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ROOT / "examples" / "resnet_any.mach"
    model = machc.load(source).ResNet().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "resnet_any.onnx"
    run = machc_cli("export", source, "--onnx", out, "--weights", tmp_path / "weights.pt")
    assert run.returncode == 0, run.stderr
    assert "dynamic axes: batch, H, W" in run.stdout
    assert "batch 5, twice the example sizes: max error" in run.stdout
    for size in ((37, 37), (20, 64)):  # the one file, at sizes it was not exported at
        x = torch.randn(3, 3, *size)
        (got,) = run_onnx(out, {"img": x})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)
