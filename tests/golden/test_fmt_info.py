"""Golden files for ``machc fmt`` (messy inputs and their layout) and ``machc info`` (every example).

Refresh with ``pytest tests/golden --update-golden`` and read the diff before committing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from machc.driver import check_source
from machc.fmt import format_source
from machc.info import describe, program_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# the examples, and sequence machines (ids, windows, positions) whatever the examples hold
EXAMPLE_FILES = [*sorted((ROOT / "examples").glob("*.mach")), HERE / "sequences.mach"]
FMT_CASES = sorted((HERE / "fmt").glob("*.mach"))


def _compare(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; run pytest tests/golden --update-golden"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs from the golden file (see the diff above)"


@pytest.mark.parametrize("case", FMT_CASES, ids=lambda p: p.stem)
def test_fmt_layout(case: Path, update_golden: bool) -> None:
    formatted = format_source(case.read_text(encoding="utf-8"), case.name)
    assert format_source(formatted, case.name) == formatted
    _compare(case.with_suffix(".txt"), formatted, update_golden)


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_info_report(example: Path, update_golden: bool) -> None:
    name = f"{example.parent.name}/{example.name}"
    checked = check_source(example.read_text(encoding="utf-8"), name)
    _compare(HERE / "info" / f"{example.stem}.txt", describe(checked.program) + "\n", update_golden)


def test_info_json(update_golden: bool) -> None:
    checked = check_source((ROOT / "examples" / "gated.mach").read_text(), "examples/gated.mach")
    machines = [info.to_json() for info in program_info(checked.program)]
    _compare(HERE / "info" / "gated.json", json.dumps(machines, indent=2) + "\n", update_golden)
