"""``machc fmt`` and ``machc info`` from the command line, and info's counts against torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import machc
import pytest
from machc.driver import check_source
from machc.info import program_info

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))
SEQUENCES = ROOT / "tests" / "golden" / "sequences.mach"  # ids, windows, positions, rmsnorm
MESSY = "machine M{input x:4 output y:4\nf:x*x->y=linear|relu}\n"
TIDY = "machine M {\n    input  x : 4\n    output y : 4\n\n    f : x × x -> y = linear | relu\n}\n"


def machc_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "machc", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_fmt_rewrites_in_place_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.mach"
    path.write_text(MESSY)
    path.chmod(0o600)
    result = machc_cli("fmt", path)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == TIDY
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["m.mach"]  # no temporary file left


def test_fmt_leaves_a_formatted_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "m.mach"
    path.write_text(TIDY)
    os.utime(path, (1_000_000, 1_000_000))
    result = machc_cli("fmt", path)
    assert result.returncode == 0
    assert result.stderr == ""
    assert path.stat().st_mtime == 1_000_000


def test_fmt_check_names_each_file_that_would_change(tmp_path: Path) -> None:
    messy, tidy = tmp_path / "messy.mach", tmp_path / "tidy.mach"
    messy.write_text(MESSY)
    tidy.write_text(TIDY)
    result = machc_cli("fmt", "--check", messy, tidy)
    assert result.returncode == 1
    assert f"machc: {messy} is not formatted" in result.stderr
    assert str(tidy) not in result.stderr
    assert result.stdout.startswith(f"--- {messy}\n+++ {messy} (formatted)\n@@")
    assert "+    f : x × x -> y = linear | relu\n" in result.stdout
    assert messy.read_text() == MESSY  # --check writes nothing
    assert machc_cli("fmt", "--check", tidy).returncode == 0


def test_fmt_check_passes_on_the_examples() -> None:
    result = machc_cli("fmt", "--check", *EXAMPLES)
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


def test_fmt_reads_standard_input() -> None:
    result = machc_cli("fmt", "-", stdin=MESSY)
    assert result.returncode == 0
    assert result.stdout == TIDY
    check = machc_cli("fmt", "--check", "-", stdin=MESSY)
    assert check.returncode == 1
    assert "--- <stdin>" in check.stdout


def test_fmt_syntax_error_is_a_diagnostic(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.mach", tmp_path / "good.mach"
    bad.write_text("machine M {\n    input x 4\n}\n")
    good.write_text(MESSY)
    result = machc_cli("fmt", bad, good)
    assert result.returncode == 1
    assert f"{bad}:2:13: error: unexpected '4'" in result.stderr
    assert result.stderr.rstrip().endswith("machc: 1 error")
    assert bad.read_text() == "machine M {\n    input x 4\n}\n"
    assert good.read_text() == TIDY  # the other files are still formatted


def test_fmt_usage_errors(tmp_path: Path) -> None:
    result = machc_cli("fmt", tmp_path / "missing.mach")
    assert result.returncode == 2
    assert "machc: error: cannot read" in result.stderr
    assert machc_cli("fmt").returncode == 2


def test_info_prints_tables_and_json() -> None:
    dense = ROOT / "examples" / "dense.mach"
    text = machc_cli("info", dense, "--set", "depth=2")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("machine DenseMachine(depth=2, width=32)  dense.mach:2\n")
    assert "total: 2,442 parameters" in text.stdout  # 16·32+32 + 48·32+32 + 32·10+10
    data = json.loads(machc_cli("info", dense, "--format", "json").stdout)
    (machine,) = data["machines"]
    assert machine["total_params"] == 8650
    assert [e["name"] for e in machine["edges"]] == ["g[1]", "g[2]", "g[3]", "g[4]", "head"]
    assert machc_cli("info", ROOT / "tests/golden/diagnostics/cycles.mach").returncode == 1


def test_info_shows_ids_spaces_and_their_embeddings() -> None:
    text = machc_cli("info", SEQUENCES, "--set", "GPTish.vocab=100")
    assert text.returncode == 0, text.stderr
    assert re.search(r"\n    tok   input   ids\(100\) +0\n", text.stdout)
    assert re.search(r"\n    embed +1  tok +h +6,400 ", text.stdout)  # 100 ids × 64
    assert re.search(r"\n    pos +1  t +h +8,192 ", text.stdout)  # 128 positions × 64
    data = json.loads(machc_cli("info", SEQUENCES, "--format", "json").stdout)
    gpt = next(m for m in data["machines"] if m["name"] == "GPTish")
    assert gpt["spaces"][0] == {"name": "tok", "role": "input", "shape": [], "depth": 0, "ids": 256}
    assert [e["inputs"] for e in gpt["edges"][3:6]] == [
        ["q", "k[0..t]", "v[0..t]"],
        ["q", "k[t-8..t]", "v[t-8..t]"],
        ["q", "k[..]", "v[..]"],
    ]


@pytest.mark.parametrize("example", [*EXAMPLES, SEQUENCES], ids=lambda p: p.name)
def test_info_parameter_count_is_the_modules(example: Path) -> None:
    checked = check_source(example.read_text(encoding="utf-8"), str(example))
    module = machc.load(example)
    infos = program_info(checked.program)
    assert len(infos) == len(checked.program.machines)
    for info, machine in zip(infos, checked.program.machines, strict=True):
        model = getattr(module, machine.machine.key)()
        assert info.exact
        assert info.total_params == sum(p.numel() for p in model.parameters())
        assert [e.name for e in info.edges] == [e.name for e in machine.machine.edges]
