"""The documentation does not lie: its .mach examples compile, its error examples fail.

Every fenced block with the info string ``mach`` in docs/*.md and README.md
must compile without errors (warnings are allowed); every ``mach-error``
block must fail with a :class:`machc.CompileError`. In docs/diagnostics.md a
block under a heading that names a code (``E004``, ``W101``) must produce a
diagnostic with that code. Every diagnostic code and every op is documented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import machc
import pytest
from machc.diagnostics import Code
from machc.driver import check_source, compile_source
from machc.ops import OPS
from machc.reference import replace_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DIAGNOSTICS = DOCS / "diagnostics.md"
LANGUAGE = DOCS / "language.md"

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
CODE_IN_HEADING = re.compile(r"^#+\s.*?\b([EW]\d{3})\b")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    heading_code: str | None  # the code named by the closest heading above, if any

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their info strings."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading_code = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            match = CODE_IN_HEADING.match(line)
            heading_code = match.group(1) if match else None
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        indent, marker, info = fence.groups()
        body = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(marker):
            text = lines[j]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            j += 1
        blocks.append(Block(path, i + 1, info, "\n".join(body) + "\n", heading_code))
        i = j + 1
    return blocks


def documents() -> list[Path]:
    paths = sorted(DOCS.glob("*.md"))
    readme = ROOT / "README.md"
    return [*paths, readme] if readme.exists() else paths


def blocks_with(info: str) -> list[Block]:
    return [block for path in documents() for block in fenced_blocks(path) if block.info == info]


VALID = blocks_with("mach")
INVALID = blocks_with("mach-error")


def test_the_docs_have_examples() -> None:
    assert VALID, "no ```mach blocks found"
    assert INVALID, "no ```mach-error blocks found"


@pytest.mark.parametrize("block", VALID, ids=lambda b: b.name)
def test_mach_blocks_compile(block: Block) -> None:
    filename = f"{block.name} (a mach block)"
    try:
        checked = check_source(block.text, filename=filename)
    except machc.CompileError as exc:
        pytest.fail(f"{block.name}: the example does not compile:\n{exc}")
    compile_source(block.text, filename=filename)  # and the code generator accepts it
    if block.path == DIAGNOSTICS and block.heading_code is not None:
        codes = {d.code.value for d in checked.warnings}
        assert block.heading_code in codes, (
            f"{block.name}: expected a {block.heading_code} warning, got {sorted(codes)}"
        )


@pytest.mark.parametrize("block", INVALID, ids=lambda b: b.name)
def test_mach_error_blocks_fail(block: Block) -> None:
    with pytest.raises(machc.CompileError) as caught:
        check_source(block.text, filename=f"{block.name} (a mach-error block)")
    if block.path == DIAGNOSTICS and block.heading_code is not None:
        codes = {d.code.value for d in caught.value.diagnostics}
        assert block.heading_code in codes, (
            f"{block.name}: expected {block.heading_code}, got {sorted(codes)}"
        )


def test_every_diagnostic_code_is_documented() -> None:
    text = DIAGNOSTICS.read_text(encoding="utf-8")
    missing = [code.value for code in Code if code.value not in text]
    assert not missing, f"codes missing from docs/diagnostics.md: {missing}"


def test_every_op_is_documented() -> None:
    text = LANGUAGE.read_text(encoding="utf-8")
    missing = [name for name in OPS if f"`{name}`" not in text]
    assert not missing, f"ops missing from docs/language.md: {missing}"


def test_op_reference_is_generated_from_the_op_table(update_golden: bool) -> None:
    page = LANGUAGE.read_text(encoding="utf-8")
    expected = replace_reference(page)
    if update_golden:
        LANGUAGE.write_text(expected, encoding="utf-8")
        return
    assert page == expected, (
        "the op reference in docs/language.md is out of date with compiler/ops.py; "
        "run: .venv/bin/python -m pytest tests/unit/test_docs.py --update-golden"
    )
