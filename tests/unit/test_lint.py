"""ruff over the project, and over the generated code (which people read and diff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_project_passes_ruff() -> None:
    paths = ["compiler", "grammar", "runtime", "tests", "examples", "benchmarks"]
    checked = ruff("check", *paths)
    assert checked.returncode == 0, checked.stdout
    formatted = ruff("format", "--check", *paths)
    assert formatted.returncode == 0, formatted.stdout


def test_generated_code_passes_ruff() -> None:
    # Long lines are allowed: an expression is not wrapped over several lines.
    golden = sorted(str(p) for p in (ROOT / "tests" / "golden" / "examples").glob("*.py"))
    result = ruff("check", "--no-cache", "--select", "E,F,W,B,UP", "--ignore", "E501", *golden)
    assert result.returncode == 0, result.stdout
