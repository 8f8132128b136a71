"""Golden files of `machc graph`: the DOT text and the weight-matrix text of every example.

Examples that use machines as edges also have ``NAME-expanded.dot`` (``--expand``).
``sequences.mach`` here joins the examples: sequence machines (reads of later steps,
windows, ids, positions) drawn whatever the examples hold.

Refresh with ``pytest tests/golden --update-golden`` and read the diff before committing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from machc.driver import check_file
from machc.graph import own_machines, to_dot
from machc.matrix import matrix_text, picture

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLE_FILES = [*sorted((ROOT / "examples").glob("*.mach")), HERE / "sequences.mach"]


def _compare(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; run pytest tests/golden --update-golden"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs from the golden file (see the diff above)"


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_graph_dot(example: Path, update_golden: bool) -> None:
    program = check_file(example).program
    _compare(HERE / "graph" / f"{example.stem}.dot", to_dot(program), update_golden)


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_graph_dot_expanded(example: Path, update_golden: bool) -> None:
    program = check_file(example).program
    expanded = to_dot(program, expand=True)
    uses_machines = any(e.machine for c in own_machines(program) for e in c.machine.edges)
    if not uses_machines:  # nothing to open: the same drawing
        assert expanded == to_dot(program)
        return
    _compare(HERE / "graph" / f"{example.stem}-expanded.dot", expanded, update_golden)


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_matrix_text(example: Path, update_golden: bool) -> None:
    pictures = [picture(c) for c in own_machines(check_file(example).program)]
    _compare(HERE / "matrix" / f"{example.stem}.txt", matrix_text(pictures), update_golden)


@pytest.mark.parametrize("example", ["autoencoder"])
def test_matrix_text_by_unit(example: str, update_golden: bool) -> None:
    program = check_file(ROOT / "examples" / f"{example}.mach").program
    pictures = [picture(c, units=True) for c in own_machines(program)]
    _compare(HERE / "matrix" / f"{example}-units.txt", matrix_text(pictures), update_golden)
