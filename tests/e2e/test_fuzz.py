"""The fuzzer, briefly: every input gets a proper diagnostic or a module that works.

CI runs ``python -m tests.fuzz`` on a fixed seed for a few hundred inputs
(random well-formed and ill-formed machines, mutations of the examples, raw
bytes; see docs/reliability.md) and fails on any internal error, hang,
miscompile or blow-up, printing each minimised reproducer with its
traceback. Long runs are by hand: ``python -m tests.fuzz --n 100000 --jobs 2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED = 13
INPUTS = 400


def fuzz(*args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--quiet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_fuzz_finds_no_failure(tmp_path: Path) -> None:
    out = tmp_path / "fuzz"
    # --time-limit is a safety net for slow machines; the run is 400 inputs.
    run = fuzz(
        *("--out", str(out), "--n", str(INPUTS), "--seed", str(SEED), "--jobs", "1"),
        *("--time-limit", "240", "--minimise-seconds", "15"),
    )
    assert run.returncode in (0, 1), run.stdout + run.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    outcomes = summary["outcomes"]
    # The oracle was exercised: modules were generated and run, and diagnostics given.
    assert summary["inputs"] >= 100, summary
    assert summary["modules_run"] >= summary["inputs"] // 5, summary
    assert outcomes["ok-diagnostic"] >= summary["inputs"] // 5, summary
    failures = summary["failures"]
    report = "\n\n".join(
        "=" * 30
        + f" {f['files'][0]} ({f['count']} inputs)\n"
        + (out / f["files"][1]).read_text(encoding="utf-8")
        for f in failures
    )
    assert not failures, f"{len(failures)} distinct failures\n{run.stdout}\n{report}"


def test_replay_of_the_examples() -> None:
    """The harness itself: every example compiles, runs, and forward agrees with resolvent."""
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.mach"))
    run = fuzz("--replay", *examples)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(examples)
    # net.mach imports blocks.mach, found beside it in the worker's scratch folder. The
    # ImageNet-sized networks are over the worker's limits (RUN_ELEMENTS, RUN_MACS): checked
    # and compiled, not run (tests/e2e/test_cnn_references.py runs them).
    large = ("mobilenet_v2.mach", "resnet50.mach", "squeezenet.mach")
    for line in lines:
        ran = not line.split(":")[0].endswith(large)
        outcome = "ok-module (run: forward and resolvent agree)" if ran else "ok-module (not run)"
        assert line.endswith(outcome), lines
