"""Golden files: generated code of every example, `machc check` reports, every diagnostic's text.

Refresh with ``pytest tests/golden --update-golden`` and read the diff before committing.
"""

from __future__ import annotations

import contextlib

from pathlib import Path

import pytest
from machc.cli import describe
from machc.diagnostics import Code, CompileError, render_all
from machc.driver import check_source, compile_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLE_FILES = sorted((ROOT / "examples").glob("*.mach"))
DIAGNOSTIC_CASES = sorted((HERE / "diagnostics").glob("*.mach"))
# `machc check` reports: the examples, and sequence machines whatever the examples hold
REPORT_FILES = [*EXAMPLE_FILES, HERE / "sequences.mach"]


def _compare(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; run pytest tests/golden --update-golden"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs from the golden file (see the diff above)"


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_generated_code(example: Path, update_golden: bool) -> None:
    _compare(HERE / "examples" / f"{example.stem}.py", compile_file(example), update_golden)


@pytest.mark.parametrize("example", REPORT_FILES, ids=lambda p: p.name)
def test_check_report(example: Path, update_golden: bool) -> None:
    name = f"{example.parent.name}/{example.name}"
    checked = check_source(example.read_text(encoding="utf-8"), name)
    report = describe(checked.program) + "\n"
    if checked.warnings:
        report += render_all(checked.warnings, {name: checked.source}) + "\n"
    _compare(HERE / "check" / f"{example.stem}.txt", report, update_golden)


def _diagnose(case: Path) -> tuple[str, set[Code], bool]:
    """The rendered diagnostics of a case, their codes, and whether it compiled."""
    text = case.read_text(encoding="utf-8")
    try:
        with contextlib.chdir(case.parent):  # imports are relative to the case, paths short
            checked = check_source(text, case.name)
    except CompileError as exc:
        return (
            render_all(exc.diagnostics, exc.sources) + "\n",
            {d.code for d in exc.diagnostics},
            False,
        )
    codes = {d.code for d in checked.warnings}
    return render_all(checked.warnings, {case.name: text}) + "\n", codes, True


@pytest.mark.parametrize("case", DIAGNOSTIC_CASES, ids=lambda p: p.stem)
def test_diagnostic_text(case: Path, update_golden: bool) -> None:
    rendered, codes, compiled = _diagnose(case)
    # Cases named warn_* must compile (with warnings); all others must fail.
    assert compiled == case.stem.startswith("warn_"), rendered
    assert codes, "a diagnostic case must produce at least one diagnostic"
    _compare(case.with_suffix(".txt"), rendered, update_golden)


def test_every_diagnostic_code_has_a_golden_case() -> None:
    covered = set().union(*(_diagnose(case)[1] for case in DIAGNOSTIC_CASES))
    # E015 (a file that is not UTF-8) cannot be a text file here; tests/e2e/test_cli.py covers it.
    missing = set(Code) - covered - {Code.SOURCE}
    assert not missing, f"no golden case for {sorted(missing)}"
