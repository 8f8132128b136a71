"""examples/train_chars.py trains GPT on the repository's docs: briefly, as a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = "--steps 30 --batch 8 --ctx 32 --d 32 --layers 1 --sample-length 20 --log-every 10"


def train(*extra: str) -> str:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_chars.py"), *ARGS.split(), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_train_chars_lowers_the_loss_and_samples() -> None:
    out = train("--threads", "1")
    logged = [float(m) for m in re.findall(r"^step +\d+ +loss (\S+)$", out, re.M)]
    assert len(logged) == 3, out
    first, last = map(float, re.search(r"^loss (\S+) -> (\S+) ", out, re.M).groups())
    assert first > 5.0, out  # about ln 256 before training
    assert last < first - 1.0, out
    assert last == logged[-1]
    assert re.search(r"^held-out loss \S+", out, re.M), out
    sample = out.split("sample (20 bytes after the prompt", 1)[1].split("\n", 1)[1]
    assert sample.startswith("machine "), out
    assert len(sample) > len("machine \n")  # the prompt, at least one more byte, the newline


def test_train_chars_is_deterministic_for_a_seed() -> None:
    assert train("--threads", "1", "--seed", "3") == train("--threads", "1", "--seed", "3")
