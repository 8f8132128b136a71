"""`machc ir`, `machc check --format json` and `machc graph`: outputs and every exit path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from machc.driver import check_file
from machc.ir import CheckedProgram
from machc.rewrite import rewrite

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense.mach"
HYPERGRAPH = ROOT / "examples" / "hypergraph.mach"
AUTOENCODER = ROOT / "examples" / "autoencoder.mach"
NET = ROOT / "examples" / "net.mach"
GOLDEN = ROOT / "tests" / "golden"
SEQUENCES = GOLDEN / "sequences.mach"  # reads of later steps, windows, ids, positions
CYCLE = """machine M {
    input  x : 4
    space  a : 4
    space  b : 4
    output y : 4
    f : x × b -> a = linear | tanh
    g : a -> b = linear | tanh
    h : b -> y = linear
}
"""
BROKEN = """machine M {
    input  x : 4
    output y : 4
    e : x -> y = lineer
}
"""
KEYS = ["file", "line", "column", "end_line", "end_column", "severity", "code", "message"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def machc(*args, cwd: Path | None = None, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m machc`` as a user would, capturing both streams."""
    result = subprocess.run(
        [sys.executable, "-m", "machc", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- machc ir --------------------------------------------------------------------------------


def test_ir_prints_the_checked_program_that_the_schema_describes() -> None:
    result = machc("ir", DENSE, "--set", "depth=2")
    assert result.returncode == 0, result.stderr
    loaded = CheckedProgram.model_validate_json(result.stdout)
    assert loaded == check_file(DENSE, {"depth": 2}).program
    assert [s.name for s in loaded.machines[0].machine.spaces] == ["x", "h[1]", "h[2]", "y"]
    assert machc("ir", DENSE, "--set", "depth=2").stdout == result.stdout  # deterministic

    schema = machc("ir", "--schema")
    assert schema.returncode == 0, schema.stderr
    parsed = json.loads(schema.stdout)
    assert parsed == CheckedProgram.model_json_schema()
    data = json.loads(result.stdout)
    assert set(parsed["required"]) <= set(data) <= set(parsed["properties"])
    machine = parsed["$defs"]["Machine"]
    assert set(machine["required"]) <= set(data["machines"][0]["machine"])


def test_ir_warnings_go_to_stderr() -> None:
    result = machc("ir", HYPERGRAPH)
    assert result.returncode == 0
    assert "warning: space 'X7' does not reach any output" in result.stderr
    CheckedProgram.model_validate_json(result.stdout)


def test_ir_of_a_broken_file_is_diagnostics(tmp_path: Path) -> None:
    result = machc("ir", _write(tmp_path, "broken.mach", BROKEN))
    assert result.returncode == 1
    assert "error: unknown op 'lineer'" in result.stderr
    assert result.stdout == ""


def test_ir_of_sequence_machines_holds_windows_ids_positions_and_stages() -> None:
    result = machc("ir", SEQUENCES)
    assert result.returncode == 0, result.stderr
    loaded = CheckedProgram.model_validate_json(result.stdout)
    assert loaded == rewrite(check_file(SEQUENCES).program)  # what compile lowers
    plain = CheckedProgram.model_validate_json(machc("ir", SEQUENCES, "--no-cells").stdout)
    assert plain == check_file(SEQUENCES).program
    machines = {c.machine.name: c for c in loaded.machines}
    gpt = machines["GPTish"]
    assert gpt.machine.spaces[0].ids == 256 and gpt.machine.spaces[0].shape == ()
    reads = {e.name: e.inputs for e in gpt.machine.edges}
    assert reads["pos"][0].position and reads["pos"][0].space == "t"
    assert [p.text("t") for p in reads["win"]] == ["q", "k[t-8..t]", "v[t-8..t]"]
    assert [s.kind.value for s in gpt.structure.stages] == ["all"]
    bi = machines["BiElman"]
    assert [p.delay for p in bi.machine.edges[1].inputs] == [0, -1]  # hb[t+1]
    assert [(s.kind.value, s.edges) for s in bi.structure.stages] == [
        ("forward", ("fwd",)),
        ("backward", ("bwd",)),
        ("all", ("join",)),
    ]
    assert not bi.structure.causal and bi.structure.delays == {"hf": 1}
    # the rewrite cells: each of BiElman's loops is torch.nn.RNN's cell
    assert [(c.kind.value, c.edges, c.reverse) for c in bi.structure.cells] == [
        ("rnn_tanh", ("fwd",), False),
        ("rnn_tanh", ("bwd",), True),
    ]


# --- machc check ----------------------------------------------------------------------------


def test_check_reports_stages_and_every_kind_of_read_of_other_steps() -> None:
    result = machc("check", SEQUENCES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "check" / "sequences.txt").read_text()
    bi, gpt, attend, stack = result.stdout.split("\n\n")
    assert bi.splitlines()[-6:] == [
        "  reads of earlier steps: hf[t-1]",
        "  reads of later steps: hb[t+1]",
        "  not causal: it reads later steps, so it cannot run in chunks (no state=)",
        "  stage 1, step by step, forward in time: fwd",
        "  stage 2, step by step, backward in time: bwd",
        "  stage 3, every step at once: join",
    ]
    assert "  tok    input   ids(256)  0" in gpt.splitlines()
    assert (
        "  reads of windows of steps: k[0..t], v[0..t], k[t-8..t], v[t-8..t], k[..], v[..]" in gpt
    )
    assert "  reads of the step number t: pos" in gpt
    assert "not causal" not in attend  # a sliding window reads no later step
    assert stack.splitlines()[-2:] == [
        "  stage 1, every step at once: a",
        "  stage 2, step by step, forward in time: b",
    ]
    assert machc("check", "--format", "json", SEQUENCES).stdout.strip() == "[]"


# --- machc check --format json -------------------------------------------------------------


def test_check_json_lists_warnings_and_prints_no_report() -> None:
    result = machc("check", "--format", "json", HYPERGRAPH)
    assert result.returncode == 0
    assert result.stderr == ""
    diagnostics = json.loads(result.stdout)
    assert diagnostics == [
        {
            "file": str(HYPERGRAPH),
            "line": 9,
            "column": 12,
            "end_line": 9,
            "end_column": 14,
            "severity": "warning",
            "code": "W101",
            "message": "space 'X7' does not reach any output",
            "hint": "nothing it feeds is returned by forward",
            "notes": [],
        }
    ]
    clean = machc("check", "--format", "json", DENSE)
    assert clean.returncode == 0 and json.loads(clean.stdout) == []


def test_check_json_errors_with_notes_exit_1(tmp_path: Path) -> None:
    source = _write(tmp_path, "cycle.mach", CYCLE)
    result = machc("check", "--format", "json", source)
    assert result.returncode == 1
    assert result.stderr == ""
    (cycle,) = json.loads(result.stdout)
    assert list(cycle)[: len(KEYS)] == KEYS
    assert cycle["code"] == "E013" and cycle["severity"] == "error"
    assert (cycle["file"], cycle["line"], cycle["column"]) == (str(source), 7, 5)
    assert cycle["hint"].startswith("a machine of finite depth has no cycles")
    assert cycle["notes"] == [
        {
            "file": str(source),
            "line": 6,
            "column": 5,
            "end_line": 6,
            "end_column": 6,
            "message": "edge 'f' reads 'b' and writes 'a'",
        }
    ]


def test_check_json_diagnostics_without_a_place_and_not_utf8(tmp_path: Path) -> None:
    unknown = machc("check", "--format", "json", DENSE, "--set", "dpeth=3")
    assert unknown.returncode == 1
    (first,) = json.loads(unknown.stdout)
    assert first["code"] == "E006" and first["line"] is not None  # placed at the machine
    binary = tmp_path / "binary.mach"
    binary.write_bytes(b"machine M {\n  input x : 4 \xff\n}\n")
    result = machc("check", "--format", "json", binary)
    assert result.returncode == 1
    (diagnostic,) = json.loads(result.stdout)
    assert diagnostic["code"] == "E015" and diagnostic["line"] == 2


# --- machc graph -----------------------------------------------------------------------------


def test_graph_prints_dot_by_default_and_writes_dot_files(tmp_path: Path) -> None:
    expected = (GOLDEN / "graph" / "hypergraph.dot").read_text()
    result = machc("graph", HYPERGRAPH)
    assert result.returncode == 0
    assert result.stdout == expected
    assert "warning: space 'X7'" in result.stderr
    out = tmp_path / "h.dot"
    assert machc("graph", HYPERGRAPH, "-o", out).returncode == 0
    assert out.read_text() == expected
    assert machc("graph", HYPERGRAPH, "-o", "-").stdout == expected


@needs_dot
@pytest.mark.parametrize(
    "ext, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")], ids=str
)
def test_graph_renders_with_graphviz(tmp_path: Path, ext: str, magic: bytes) -> None:
    out = tmp_path / f"dense.{ext}"
    result = machc("graph", DENSE, "-o", out, "--set", "depth=2")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_graph_of_sequence_machines(tmp_path: Path) -> None:
    result = machc("graph", SEQUENCES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "graph" / "sequences.dot").read_text()
    matrix = machc("graph", "--matrix", SEQUENCES, "--machine", "BiElman")
    assert matrix.stdout.splitlines()[0].endswith("+ reads a later time step")
    units = machc("graph", "--matrix", "--units", SEQUENCES, "--machine", "GPTish")
    assert units.returncode == 2 and "more than 200 for --units" in units.stderr  # ids(256)


def test_graph_picks_one_machine(tmp_path: Path) -> None:
    source = _write(tmp_path, "two.mach", DENSE.read_text() + "\n" + AUTOENCODER.read_text())
    both = machc("graph", source)
    assert both.returncode == 0
    assert "subgraph cluster_m1" in both.stdout
    one = machc("graph", source, "--machine", "AutoEncoder")
    assert one.returncode == 0
    assert one.stdout == (GOLDEN / "graph" / "autoencoder.dot").read_text()
    matrix = machc("graph", "--matrix", source, "--machine", "AutoEncoder")
    assert matrix.stdout == (GOLDEN / "matrix" / "autoencoder.txt").read_text()


def test_graph_draws_sub_machines_as_boxes_or_expanded(tmp_path: Path) -> None:
    plain = machc("graph", NET)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == (GOLDEN / "graph" / "net.dot").read_text()
    assert "ResBlock(w=32)" in plain.stdout and "cluster" not in plain.stdout
    expanded = machc("graph", NET, "--expand")
    assert expanded.returncode == 0, expanded.stderr
    assert expanded.stdout == (GOLDEN / "graph" / "net-expanded.dot").read_text()
    assert "subgraph cluster_m0_e1 {" in expanded.stdout
    # an instance by name: the sub-machine alone, as a file of its own would draw it
    block = machc("graph", NET, "--machine", "ResBlock")
    assert block.returncode == 0
    assert block.stdout == (GOLDEN / "graph" / "blocks.dot").read_text()
    matrix = machc("graph", "--matrix", NET, "--machine", "ResBlock")
    assert matrix.stdout == (GOLDEN / "matrix" / "blocks.txt").read_text()
    assert machc("graph", "--matrix", NET).stdout == (GOLDEN / "matrix" / "net.txt").read_text()
    if shutil.which("dot"):
        out = tmp_path / "net.svg"
        assert machc("graph", NET, "--expand", "-o", out).returncode == 0
        svg = out.read_text()
        assert "blk1" in svg and "shares blk2" in svg


def test_graph_expand_with_matrix_is_a_usage_error(tmp_path: Path) -> None:
    result = machc("graph", "--matrix", "--expand", NET, "-o", tmp_path / "m.txt")
    assert result.returncode == 2
    assert "--expand does not go with --matrix" in result.stderr
    assert list(tmp_path.iterdir()) == []
    nope = machc("graph", NET, "--expand", "--machine", "Nope")
    assert nope.returncode == 2
    assert "no machine 'Nope' in" in nope.stderr and "ResBlock, Net" in nope.stderr


def test_graph_without_graphviz_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "dense.svg"
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    result = machc("graph", DENSE, "-o", out, env=env)
    assert result.returncode == 2
    assert "'dot'" in result.stderr and "install Graphviz" in result.stderr
    assert not out.exists()
    assert machc("graph", DENSE, "-o", tmp_path / "dense.dot", env=env).returncode == 0


def test_graphviz_failing_is_a_usage_error_and_writes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    dot = fake / "dot"
    dot.write_text("#!/bin/sh\necho 'Error: renderer for png is unavailable' >&2\nexit 1\n")
    dot.chmod(0o755)
    out = tmp_path / "dense.png"
    out.write_bytes(b"an earlier drawing")
    result = machc("graph", DENSE, "-o", out, env={**os.environ, "PATH": str(fake)})
    assert result.returncode == 2
    assert "renderer for png is unavailable" in result.stderr
    assert out.read_bytes() == b"an earlier drawing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "dense.png"]


def test_graph_of_a_broken_file_leaves_the_output_untouched(tmp_path: Path) -> None:
    source = _write(tmp_path, "broken.mach", BROKEN)
    out = _write(tmp_path, "broken.dot", "digraph earlier {}\n")
    result = machc("graph", source, "-o", out)
    assert result.returncode == 1
    assert "error: unknown op 'lineer'" in result.stderr
    assert out.read_text() == "digraph earlier {}\n"
    assert machc("graph", "--matrix", source).returncode == 1


def test_matrix_text_and_image(tmp_path: Path) -> None:
    result = machc("graph", "--matrix", AUTOENCODER, "--units")
    assert result.returncode == 0
    assert result.stdout == (GOLDEN / "matrix" / "autoencoder-units.txt").read_text()
    text = tmp_path / "m.txt"
    assert machc("graph", "--matrix", HYPERGRAPH, "-o", text).returncode == 0
    assert text.read_text() == (GOLDEN / "matrix" / "hypergraph.txt").read_text()
    pytest.importorskip("matplotlib")
    png = tmp_path / "m.png"
    result = machc("graph", "--matrix", HYPERGRAPH, "-o", png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes().startswith(b"\x89PNG")


def test_matrix_without_matplotlib_is_a_usage_error(monkeypatch, capsys, tmp_path) -> None:
    from machc import cli

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.colors"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    out = tmp_path / "m.png"
    assert cli.main(["graph", "--matrix", str(DENSE), "-o", str(out)]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["ir"],
        ["ir", "--schema", str(DENSE)],
        ["ir", "--schema", "--set", "depth=2"],
        ["ir", "missing.mach"],
        ["check", "--format", "xml", str(DENSE)],
        ["check", "--format", "json", "missing.mach"],
        ["graph"],
        ["graph", "missing.mach"],
        ["graph", str(DENSE), "-o", "out.jpg"],
        ["graph", str(DENSE), "-o", "out"],
        ["graph", "--matrix", str(DENSE), "-o", "out.dot"],
        ["graph", str(DENSE), "--units"],
        ["graph", "--matrix", "--expand", str(DENSE)],
        ["graph", str(NET), "--expand", "--machine", "Nope"],
        ["graph", str(DENSE), "--machine", "Nope"],
        ["graph", "--matrix", str(DENSE), "--machine", "Nope"],
        ["graph", "--matrix", "--units", str(DENSE), "--set", "width=64"],
        ["graph", str(DENSE), "-o", "/nonexistent-dir/out.dot"],
        ["graph", str(ROOT / "examples")],
    ],
    ids=lambda a: " ".join(Path(x).name if "/" in x else x for x in a),
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = machc(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "error" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_error_messages(tmp_path: Path) -> None:
    units = machc("graph", "--matrix", "--units", DENSE, "--set", "width=64")
    assert "machine DenseMachine has 282 units, more than 200 for --units" in units.stderr
    nope = machc("graph", DENSE, "--machine", "Nope")
    assert "no machine 'Nope' in" in nope.stderr and "DenseMachine" in nope.stderr
    jpg = machc("graph", DENSE, "-o", "out.jpg")
    assert "cannot tell the format of out.jpg: graph writes .svg, .png, .pdf, .dot" in jpg.stderr


def test_graph_refuses_to_overwrite_the_source_and_failed_writes_leave_nothing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "dense.mach"
    source.write_text(DENSE.read_text())
    alias = tmp_path / "dense.dot"
    alias.symlink_to(source)
    assert machc("graph", source, "-o", alias).returncode == 2
    assert source.read_text() == DENSE.read_text()
    target = tmp_path / "out.dot"
    target.mkdir()
    assert machc("graph", source, "-o", target).returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.dot", "dense.mach", "out.dot"]


def test_outputs_do_not_depend_on_the_hash_seed() -> None:
    digits = ROOT / "examples" / "digits.mach"
    for args in (["graph", HYPERGRAPH], ["graph", "--matrix", digits], ["ir", digits]):
        runs = {machc(*args, env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in "01"}
        assert len(runs) == 1, args
