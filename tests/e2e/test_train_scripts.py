"""The digits training scripts as users run them: briefly, as subprocesses.

examples/train_digits.py (DataLoader, evaluation every epoch, checkpoint and reload),
examples/train_digits_ddp.py under torch.distributed.run with two gloo processes, and
examples/train_digits_lightning.py where lightning is installed (it is not a dependency).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import machc
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EPOCH = re.compile(r"^epoch +(\d+) +held-out loss (\S+) +acc (\S+) +train loss (\S+)$", re.M)
RELOADED = re.compile(r"^reloaded (\S+) .*: held-out accuracy (\S+) \(the same\)$", re.M)
FINAL = re.compile(r"^accuracy on 359 held-out digits: (\S+)$", re.M)


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``args``; on a timeout, stops it and fails. torch.distributed.run starts its
    workers in sessions of their own: SIGTERM to it makes it stop them, then it exits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate(timeout=30)
        pytest.fail(f"{args} ran over {timeout} s\n{out}\n{err}")
    assert process.returncode == 0, f"{out}\n{err}"
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def check_epochs(out: str, epochs: int) -> float:
    """The per-epoch lines are there, once each; returns the final accuracy, which the
    reloaded checkpoint reproduces."""
    rows = EPOCH.findall(out)
    assert [int(row[0]) for row in rows] == list(range(1, epochs + 1)), out
    for _, test_loss, accuracy, train_loss in rows:
        assert float(test_loss) > 0 and float(train_loss) > 0
        assert 0.0 <= float(accuracy) <= 1.0
    assert float(rows[-1][3]) < float(rows[0][3]), out  # the training loss went down
    final = float(FINAL.search(out).group(1))
    assert float(RELOADED.search(out).group(2)) == final, out
    assert final > 0.8, out  # chance is 0.1
    return final


def held_out_accuracy(model: torch.nn.Module) -> float:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_digits
    finally:
        sys.path.pop(0)
    _, test_set = train_digits.digits(seed=0)
    x, y = test_set.tensors
    with torch.no_grad():
        return (model.eval()(x).argmax(dim=1) == y).float().mean().item()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_digits_evaluates_each_epoch_and_reloads_its_checkpoint(tmp_path: Path) -> None:
    script = EXAMPLES / "train_digits.py"
    result = run([sys.executable, str(script), "--epochs", "2", "--out", str(tmp_path)])
    accuracy = check_epochs(result.stdout, 2)
    assert "batch/s" not in result.stderr  # no progress bar when the output is not a terminal
    assert (tmp_path / "digits.py").exists()
    saved = torch.load(tmp_path / "digits.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["machine"] == "DigitNet"
    assert saved["optimizer"]["state"]  # Adam's moments: training can resume
    # The checkpoint, in a model of the module it compiled, gives the accuracy printed.
    model = machc.load(EXAMPLES / "digits.mach", params=saved["params"]).DigitNet()
    model.load_state_dict(saved["model"])
    assert held_out_accuracy(model) == pytest.approx(accuracy, abs=5e-4)


def test_train_digits_ddp_on_two_gloo_processes(tmp_path: Path) -> None:
    script = EXAMPLES / "train_digits_ddp.py"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    args = [str(script), "--epochs", "2", "--device", "cpu", "--out", str(tmp_path)]
    result = run(launch + args, timeout=180)
    out = result.stdout
    assert "training on 2 process(es) (gloo, cpu): 719 of 1438 digits each" in out, out
    accuracy = check_epochs(out, 2)  # rank 0 alone prints: every line once
    saved = torch.load(tmp_path / "digits_ddp.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["world_size"] == 2
    assert not any(key.startswith("module.") for key in saved["model"])
    model = machc.load(EXAMPLES / "digits.mach", params=saved["params"]).DigitNet()
    model.load_state_dict(saved["model"])  # a plain model takes DDP's checkpoint
    assert held_out_accuracy(model) == pytest.approx(accuracy, abs=5e-4)


def test_train_digits_lightning(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    script = EXAMPLES / "train_digits_lightning.py"
    args = ["--epochs", "2", "--accelerator", "cpu", "--devices", "1", "--out", str(tmp_path)]
    result = run([sys.executable, str(script), *args])
    out = result.stdout
    check_epochs(out, 2)
    summary = result.stderr  # Lightning logs its model summary there
    assert re.search(r"\| In sizes +\| Out sizes", summary), summary  # example_input_array
    assert re.search(r"\| DigitNet +\|.*\| \[2, 64\] +\| \[2, 10\]", summary), summary
    assert (tmp_path / "digits_lightning.ckpt").exists()
