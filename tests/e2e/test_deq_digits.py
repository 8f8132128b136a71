"""examples/deq_digits.py trains the deep equilibrium model on the digits: briefly, in-process."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EPOCH = re.compile(
    r"^epoch +(\d+) +loss (\S+) +acc (\S+) +fwd it +(\S+) +res (\S+) +bwd it +(\S+)"
    r" +conv (\d+)/(\d+)$",
    re.M,
)
MAX_ITER, TOL = 40, 1e-4  # examples/deq.mach: solve z with anderson(tol=1e-4, max_iter=40)


def deq_digits():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import deq_digits
    finally:
        sys.path.pop(0)
    return deq_digits


def test_deq_digits_trains_and_reports_the_solver(tmp_path: Path, capsys) -> None:
    epochs = 3
    accuracy = deq_digits().main(["--epochs", str(epochs), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = EPOCH.findall(out)
    assert [int(row[0]) for row in rows] == list(range(1, epochs + 1)), out
    losses = [float(row[1]) for row in rows]
    assert losses[-1] < losses[0] / 2, losses
    for _, loss, acc, fwd, res, bwd, converged, batches in rows:
        assert math.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0
        assert 1.0 <= float(fwd) <= MAX_ITER and 1.0 <= float(bwd) <= MAX_ITER
        assert 0.0 <= float(res) < 10 * TOL  # the mean of each batch's final residual
        assert int(converged) >= int(batches) // 2 and int(batches) == 23  # 1438 / 64
    # chance is 0.1; 3 epochs reach 0.91 to 0.94 over seeds 0..11 (15, the default, about 0.97)
    assert accuracy > 0.85
    assert float(rows[-1][2]) == round(accuracy, 3)
    assert f"accuracy on 359 held-out digits: {accuracy:.3f}" in out
    assert (tmp_path / "deq.py").exists()


def test_deq_digits_is_deterministic_and_quiet(tmp_path: Path, capsys) -> None:
    module = deq_digits()
    args = ["--epochs", "1", "--seed", "3", "--width", "32", "--out", str(tmp_path)]
    first = module.main(args)
    out = capsys.readouterr().out
    assert module.main(args) == first
    assert capsys.readouterr().out == out
    assert module.main([*args, "--quiet"]) == first
    assert capsys.readouterr().out == out.splitlines(keepends=True)[-1]
