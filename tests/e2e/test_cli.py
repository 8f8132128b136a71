"""The ``machc`` command line: every exit code, outputs, atomic writes, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense.mach"
BROKEN = """machine M {
    input  x : 4
    output y : 4
    e : x -> y = lineer
}
"""


def machc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m machc`` as a user would, capturing both streams."""
    result = subprocess.run(
        [sys.executable, "-m", "machc", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_compile_writes_beside_the_source_by_default(tmp_path: Path) -> None:
    source = tmp_path / "dense.mach"
    source.write_text(DENSE.read_text())
    result = machc("compile", source)
    assert result.returncode == 0, result.stderr
    generated = (tmp_path / "dense.py").read_text()
    assert "class DenseMachine(nn.Module):" in generated
    compile(generated, "dense.py", "exec")


def test_compile_to_a_named_file_and_to_stdout(tmp_path: Path) -> None:
    out = tmp_path / "out.py"
    assert machc("compile", DENSE, "-o", out).returncode == 0
    result = machc("compile", DENSE, "-o", "-")
    assert result.returncode == 0
    assert result.stdout == out.read_text()


def test_set_binds_parameters(tmp_path: Path) -> None:
    result = machc("compile", DENSE, "-o", "-", "--set", "depth=2", "--set", "DenseMachine.width=7")
    assert result.returncode == 0, result.stderr
    assert "self.g_2 = nn.Linear(23, 7)" in result.stdout
    assert "g_3" not in result.stdout


def test_check_reports_structure() -> None:
    result = machc("check", ROOT / "examples" / "hypergraph.mach")
    assert result.returncode == 0
    assert "levels of independent edges:" in result.stdout
    assert "1: f1, f2" in result.stdout
    # The paper's X7 feeds nothing: a warning on stderr, not a failure.
    assert "warning: space 'X7' does not reach any output" in result.stderr
    quiet = machc("check", "-q", ROOT / "examples" / "hypergraph.mach")
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_errors_exit_1_and_leave_existing_output_untouched(tmp_path: Path) -> None:
    source = tmp_path / "broken.mach"
    source.write_text(BROKEN)
    out = tmp_path / "broken.py"
    out.write_text("# an earlier, good build\n")
    result = machc("compile", source, "-o", out)
    assert result.returncode == 1
    assert f"{source}:4:18: error: unknown op 'lineer'" in result.stderr
    assert "    e : x -> y = lineer\n" in result.stderr
    assert "                 ^~~~~~\n" in result.stderr
    assert "hint: did you mean 'linear'?" in result.stderr
    assert out.read_text() == "# an earlier, good build\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mach", "broken.py"]
    assert machc("check", source).returncode == 1


def test_bad_parameter_values_are_diagnostics() -> None:
    result = machc("check", DENSE, "--set", "depth=abc")
    assert result.returncode == 1
    assert "dense.mach:2:22: error: parameter 'depth' of DenseMachine is int" in result.stderr
    unknown = machc("check", DENSE, "--set", "dpeth=3")
    assert unknown.returncode == 1
    assert "dense.mach:2:9: error: a value is set for 'dpeth', but no machine here has a " in (
        unknown.stderr
    )
    assert "hint: did you mean 'depth'?" in unknown.stderr


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    source = tmp_path / "binary.mach"
    source.write_bytes(b"machine M {\n  input x : 4 \xff\n}\n")
    result = machc("check", source)
    assert result.returncode == 1
    assert f"{source}:2:15: error: the file is not UTF-8 text (byte 0xff)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate", "x.mach"],
        ["compile"],
        ["compile", "missing.mach"],
        ["check", "missing.mach"],
        ["compile", str(DENSE), "--set", "depth"],
        ["compile", str(DENSE), "--set", "depth=2", "--set", "depth=3"],
        ["compile", str(DENSE), "-o", "/nonexistent-dir/out.py"],
        ["compile", str(DENSE), "-o", str(DENSE)],
        ["check", str(ROOT / "examples")],
    ],
    ids=lambda a: " ".join(Path(x).name if "/" in x else x for x in a) or "no-args",
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = machc(*args)
    assert result.returncode == 2, result.stderr
    assert "error" in result.stderr
    assert DENSE.read_text().startswith("# A dense machine")


def test_version_and_console_script() -> None:
    result = machc("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("machc ")
    script = Path(sys.executable).parent / "machc"
    if script.exists():
        direct = subprocess.run([script, "--version"], capture_output=True, text=True)
        assert direct.stdout == result.stdout


def test_internal_errors_are_reported_as_bugs(monkeypatch, capsys) -> None:
    from machc import cli

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_check", explode)
    assert cli.main(["check", str(DENSE)]) == 3
    assert "internal error" in capsys.readouterr().err


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.py"
    target.mkdir()  # a directory where the file should go: os.replace fails
    result = machc("compile", DENSE, "-o", target)
    assert result.returncode == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.py"]
    assert os.path.isdir(target)
