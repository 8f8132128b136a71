"""Every complete Python example in the docs runs (from the repository root) as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _programs():
    for page in sorted((ROOT / "docs").glob("*.md")):
        for n, match in enumerate(BLOCK.finditer(page.read_text(encoding="utf-8")), 1):
            code = match.group(1)
            # Excerpts of generated code are indented or start mid-file; programs start
            # with an import.
            if code.startswith(("import ", "from ")):
                yield pytest.param(code, id=f"{page.name}-{n}")


@pytest.mark.parametrize("code", list(_programs()))
def test_program_runs(code: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
