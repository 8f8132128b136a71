"""The documentation site builds with `mkdocs build --strict`, with .mach code coloured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_strict_build(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tutorial = (site / "tutorial" / "index.html").read_text(encoding="utf-8")
    # ```mach blocks go through machc's Pygments lexer: keywords and ops are marked up.
    assert '<span class="k">machine</span>' in tutorial
    assert '<span class="nb">linear</span>' in tutorial
    assert '<img alt="The hypergraph of Residual" src="../images/residual.png"' in tutorial
    assert (site / "images" / "residual.png").exists()
    assert not (site / "images" / "generate.sh").exists()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f": {p.name}" not in nav]
    assert not missing, f"pages missing from the nav in mkdocs.yml: {missing}"
