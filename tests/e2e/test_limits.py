"""Hostile inputs get a diagnostic or a working module: limits, deep expressions, names that
collide in generated code, huge sums, byte-order marks, long lines, --set text, -o targets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import machc
import pytest
import torch
from machc.diagnostics import CompileError
from machc.driver import check_source

ROOT = Path(__file__).resolve().parents[2]


def errors(text: str, params=None) -> list[tuple[str, str, int, int]]:
    """(code, message, line, column) of every error of a source that must fail."""
    with pytest.raises(CompileError) as info:
        check_source(text, "x.mach", params)
    return [(d.code.value, d.message, d.span.line, d.span.column) for d in info.value.errors]


def run_every_class(module) -> None:
    """Construct every generated class and run forward and resolvent on random inputs."""
    for name in dir(module):
        cls = getattr(module, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        if cls.__module__ != module.__name__:
            continue
        model = cls().eval()
        lead = (2, 3) if hasattr(cls, "DELAYS") else (2,)
        inputs = {n: torch.randn(*lead, *cls.SPACES[n]) for n in cls.INPUTS}
        result = model(*inputs.values())
        outputs = (result,) if len(cls.OUTPUTS) == 1 else tuple(result)
        solved = model.resolvent(inputs)
        for out, tensor in zip(cls.OUTPUTS, outputs, strict=True):
            torch.testing.assert_close(tensor, solved[out])


# --- deep expressions -------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    ["+".join(["1"] * 500), "-" * 500 + "4", "(" * 3000 + "4" + ")" * 3000],
    ids=["sum", "minus", "parentheses"],
)
def test_deep_expressions_are_an_error_or_fine(size: str) -> None:
    text = f"machine D {{ input x : {size}\n output y : 4\n e : x -> y = linear }}"
    if size.startswith("("):  # parentheses make no deeper expression
        check_source(text, "x.mach")
        return
    ((code, message, line, _),) = errors(text)
    assert (code, line) == ("E005", 1)
    assert "nested more than 100 levels deep" in message


def test_a_deeply_nested_list_is_an_error() -> None:
    nested = "[" * 500 + "4" + "]" * 500
    ((code, message, _, _),) = errors(
        f"machine D {{ input x : 4\n output y : 4\n e : x -> y = reshape({nested}) }}"
    )
    assert code == "E005" and "nested" in message


# --- limits -------------------------------------------------------------------------


def test_sizes_have_limits() -> None:
    found = errors(
        "machine A { input x : 2147483648\n output y : 4\n e : x -> y = linear }\n"
        "machine B { input x : 100000000000000000000\n output y : 4\n e : x -> y = linear }\n"
        "machine C { input x : [4096, 4096, 4096]\n output y : 4\n e : x -> y = flatten | linear }"
    )
    assert [(c, line) for c, _, line, _ in found] == [("E009", 1), ("E009", 4), ("E009", 7)]
    assert "a size is at most 16,777,216" in found[0][1]
    assert "2,147,483,647 numbers per sample" in found[2][1]


def test_delays_and_windows_have_limits() -> None:
    found = errors(
        "machine T over t { input x : 4\n output y : 4\n"
        " a : x[t-100000000000000000000] -> y = linear\n"
        " b : x × x[t-1000000..t] × x[t-1000000..t] -> y = attention(heads=1) }"
    )
    assert [(c, line) for c, _, line, _ in found] == [("E016", 3), ("E016", 4), ("E016", 4)]


def test_a_recurrence_carries_at_most_1000_steps(tmp_path: Path) -> None:
    # each space a step loop reads at an earlier step is carried as one tensor per step it
    # reaches back to: h[t-100000] in a recurrence made a module of 35 MB (fuzzer, seed 43)
    text = (
        "machine T over t { input x : 4\n space h[1..3] : 4\n output y : 4\n"
        " for i in 1..3 { g[i] : x × h[1..3][t-D] -> h[i] = linear }\n out : h[3] -> y = linear }"
    )
    ((code, message, line, column),) = errors(text.replace("D", "334"))
    assert (code, line, column) == ("E016", 4, 29)
    assert "reads h[1][t-334] inside a recurrence" in message and "carry 1,002" in message
    source = tmp_path / "t.mach"
    source.write_text(text.replace("D", "333"))  # 999 steps carried: a module that runs
    run_every_class(machc.load(source))


def test_loops_are_bounded_in_total() -> None:
    ((code, message, line, _),) = errors(
        "machine M { input x : 4\n output y : 4\n"
        " for i in 1..100000 { for j in 1..100000 { } }\n"
        " e : x -> y = linear }"
    )
    assert (code, line) == ("E005", 3)
    assert "more than 100,000 times in all" in message


def test_ports_are_bounded_in_total() -> None:
    found = errors(
        "machine Dense(n: int = 2300) { input x : 4\n space h[1..n] : 4\n output y : 4\n"
        " for i in 1..n { g[i] : x × h[1..i-1] -> h[i] = linear }\n"
        " e : h[n] -> y = linear }"
    )
    assert len(found) == 1 and found[0][0] == "E004"
    assert "more than 2,500,000 spaces in all" in found[0][1]


def test_edges_are_bounded_in_total(monkeypatch) -> None:
    monkeypatch.setattr(machc.build, "MAX_EDGES", 10)  # 200,000: the same path, faster
    ((code, message, line, _),) = errors(
        "machine M { input x : 4\n output y : 4\n"
        " for i in 1..4 { space h[i..i] : 4\n g[i] : x -> h[i] = linear\n"
        " o[i] : h[i] -> y = linear\n p[i] : h[i] -> y = linear } }"
    )
    assert (code, line) == ("E005", 5)
    assert "machine M has more than 10 edges (loops expanded) (with i = 4)" in message


def test_spaces_written_out_are_bounded(monkeypatch) -> None:
    """A machine over time keeps no loop as a loop: a dense recurrence written out edge by
    edge names more spaces than a module should hold; compile refuses it at the loop."""
    import machc.lower_loops

    monkeypatch.setattr(machc.lower_loops, "MAX_WRITTEN_OUT_PORTS", 1_000)
    text = (
        "machine M over t { input x : 4\n space h[1..40] : 2\n output y : 4\n"
        " for i in 1..40 { g[i] : x × h[1..40][t-1] -> h[i] = linear }\n"
        " o : h[1] -> y = linear }"
    )
    check_source(text, "x.mach")  # check writes no module
    with pytest.raises(CompileError) as info:
        machc.compile_source(text, "x.mach")
    ((diagnostic,),) = [info.value.errors]
    assert (diagnostic.code.value, diagnostic.span.line, diagnostic.span.column) == ("E005", 4, 19)
    assert "written out with 41 edges naming 1,682 spaces, more than 1,000" in diagnostic.message
    assert "the loop here (40 passes) is not kept as a loop" in diagnostic.message


def test_module_paths_are_bounded() -> None:
    path = ".".join(["a"] * 300) + ".B"
    ((code, message, _, _),) = errors(
        f'machine M {{ input x : 4\n output y : 4\n e : x -> y = module("{path}") }}'
    )
    assert code == "E008" and "at most 32 dotted parts" in message


# --- names that collide in generated code ---------------------------------------------


def test_builtins_and_class_attributes_as_names_run(tmp_path: Path) -> None:
    source = tmp_path / "names.mach"
    source.write_text(
        "machine T over t { input x : 4\n space range : 4\n space list : 4\n output y : 4\n"
        " a : x × range[t-1] -> range = linear\n b : range -> list = relu\n"
        " c : list -> y = linear }\n"
        "machine E { input x : 4\n output y : 4\n DELAYS : x -> y = linear\n"
        " SPACES : x -> y = linear }\n"
        "machine O { input x : 4\n output _0 : 4\n output z : 4\n output __ : 4\n"
        " a : x -> _0 = linear\n b : x -> z = linear\n c : x -> __ = linear }\n"
    )
    module = machc.load(source)
    run_every_class(module)
    assert module.O.OUTPUTS == ("_0", "z", "__")
    out = module.O()(torch.randn(2, 4))
    assert out._fields == ("out_0", "z", "out")


@pytest.mark.parametrize("name", ["self", "__x", "__class__"])
def test_class_names_that_cannot_work_are_errors(name: str) -> None:
    ((code, _, line, column),) = errors(
        f"machine {name} {{ input x : 4\n output y : 4\n e : x -> y = linear }}\n"
        f"machine Use {{ input x : 4\n output y : 4\n a : x -> y = {name} }}"
    )
    assert (code, line, column) == ("E014", 1, 9)


def test_a_shared_edge_of_a_machine_used_as_an_edge_names_an_unknown_edge() -> None:
    found = errors(
        "machine Inner { input x : 4\n output y : 4\n e : x -> y = shared(nothing) }\n"
        "machine Outer { input x : 4\n output y : 4\n b : x -> y = Inner }"
    )
    assert [(c, line) for c, _, line, _ in found] == [("E002", 3)]


# --- scale of generated code --------------------------------------------------------------


def test_thousands_of_edges_into_one_space_import_and_agree(tmp_path: Path) -> None:
    edges = "\n".join(f" e{i} : x -> y = scale({i % 7 - 3})" for i in range(3000))
    source = tmp_path / "wide.mach"
    source.write_text(f"machine W {{ input x : 4\n output y : 4\n{edges}\n}}\n")
    model = machc.load(source).W()
    x = torch.randn(2, 4, dtype=torch.float64)
    expected = x.clone().zero_()
    for i in range(3000):  # summed left to right, in declaration order
        expected = expected + x * float(i % 7 - 3) if i else x * float(i % 7 - 3)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.resolvent({"x": x})["y"], expected, rtol=0, atol=0)


# --- text and the command line ----------------------------------------------------------


def machc_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machc", *args], cwd=cwd, capture_output=True, text=True
    )


SMALL = "machine B { input x : 4\n output y : 4\n e : x -> y = linear }\n"


def test_a_byte_order_mark_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "bom.mach").write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    assert machc_cli("check", "bom.mach", cwd=tmp_path).returncode == 0
    ((_, _, line, column),) = errors("\ufeff" + SMALL.replace("linear", "lineer"))
    assert (line, column) == (3, 15)


def test_a_huge_line_is_shown_as_a_window(tmp_path: Path) -> None:
    text = SMALL.replace(" e :", " " * 100_000 + "e :").replace("linear", "lineer")
    (tmp_path / "long.mach").write_text(text + " " * 50_000)
    result = machc_cli("check", "long.mach", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown op 'lineer'" in result.stderr
    assert max(len(line) for line in result.stderr.splitlines()) < 200


@pytest.mark.parametrize("value", ["n=٤", "n=4_0", ".n=4", "n=" + "1" * 5000])
def test_set_takes_plain_values_only(tmp_path: Path, value: str) -> None:
    (tmp_path / "p.mach").write_text(
        "machine M(n: int = 4) { input x : n\n output y : 4\n e : x -> y = linear }\n"
    )
    result = machc_cli("check", "p.mach", "--set", value, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr and len(result.stderr) < 1000


def test_output_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "b.mach").write_text(SMALL)
    (tmp_path / "target.py").write_text("old\n")
    os.symlink("target.py", tmp_path / "link.py")
    assert machc_cli("compile", "b.mach", "-o", "link.py", cwd=tmp_path).returncode == 0
    assert (tmp_path / "link.py").is_symlink()
    assert "class B(nn.Module)" in (tmp_path / "target.py").read_text()


@pytest.mark.parametrize("target", ["/dev/null", "a_directory"])
def test_output_onto_a_device_or_a_directory_is_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "b.mach").write_text(SMALL)
    (tmp_path / "a_directory").mkdir()
    result = machc_cli("compile", "b.mach", "-o", target, cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot write" in result.stderr
    assert (tmp_path / "a_directory").is_dir()


@pytest.mark.parametrize("command", ["ir", "info", "check"])
def test_a_reader_that_stops_early_is_no_error(command: str) -> None:
    """``machc ir FILE | head``: the pipe closes after a line; machc exits quietly."""
    process = subprocess.Popen(
        [sys.executable, "-m", "machc", command, str(ROOT / "examples" / "gpt.mach")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    assert stderr == ""


def test_found_by_the_fuzzer() -> None:
    """Minimised inputs of the fuzzer, each once an internal error, a hang or a blow-up."""
    cases = {
        "\x1d": "E001",  # a character str.splitlines counts as a line break
        "machine M(n: int) { for i in 1.." + "1" * 5000 + " { } }": "E001",
        "machine M { input x : 4\n output y : 4\n e : x -> y = linear(9223372036854775808) "
        "| linear }": "E008",  # out= beyond any size
        "machine M { input x : [4, 8]\n output y : [4, 8]\n"
        " e : x -> y = upsample(16000000) | adaptive_avg_pool(8) }": "E009",  # too large inside
        "machine M { input h : [8, 3, 3]\n output u : [8, 1, 1]\n"
        " e : h -> u = maxpool(3) | instancenorm }": "E009",
    }
    for text, code in cases.items():
        with pytest.raises(CompileError) as info:
            check_source(text, "x.mach")
        assert {d.code.value for d in info.value.errors} == {code}, text[:60]
        str(info.value)  # renders


def test_machines_used_as_edges_nest_at_most_32_deep() -> None:
    chain = "machine A0 { input x : 2\n output y : 2\n e : x -> y = linear }\n"
    chain += "".join(
        f"machine A{i} {{ input x : 2\n output y : 2\n e : x -> y = A{i - 1} }}\n"
        for i in range(1, 60)
    )
    with pytest.raises(CompileError) as info:
        check_source(chain, "x.mach")
    assert {d.code.value for d in info.value.errors} == {"E018"}
    assert "nest more than 32 deep" in info.value.errors[0].message


def test_more_findings_of_the_fuzzer(tmp_path: Path) -> None:
    # an op's integer argument beyond any size
    found = errors(
        "machine M { input x : [4, 8]\n output y : [4, 8]\n"
        " e : x -> y = maxpool(3, 18446744073709551616) | adaptive_avg_pool(8) }"
    )
    assert [c for c, *_ in found] == ["E008"]
    # a machine used as an edge that fails its own check: reported there, nothing else
    found = errors(
        "machine Full over t { input x : 4\n output y : 4 }\n"
        "machine Uses over t { input x : 4\n output y : 4\n q : x -> y = Full }"
    )
    assert [c for c, *_ in found] == ["E010"]
    # an edge named like the past of a space it writes (h_past): two locals, not one
    source = tmp_path / "past.mach"
    source.write_text(
        "machine Net over now { input p : 5\n space h : 6\n output s : 6\n"
        " past : p -> h = linear\n head : h[now-1] -> h = linear\n out : h -> s = identity }"
    )
    model = machc.load(source).Net().double()
    p = torch.randn(2, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(model(p), model.resolvent({"p": p})["s"])


def test_at_most_200_diagnostics_are_kept(tmp_path: Path) -> None:
    (tmp_path / "many.mach").write_text(
        "machine M { input x : 4\n space h[1..1000] : 4\n output y : 4\n o : h[1] -> y = linear }"
    )
    with pytest.raises(CompileError) as info:
        check_source((tmp_path / "many.mach").read_text(), "many.mach")
    assert len(info.value.diagnostics) == 200 and info.value.omitted == 800
    assert str(info.value).endswith("... and 800 more errors")
    result = machc_cli("check", "many.mach", cwd=tmp_path)
    assert result.stderr.endswith("machc: 1000 errors\n")


def test_last_findings_of_the_fuzzer(tmp_path: Path) -> None:
    ((code, _, line, _),) = errors("machine M {\r    x")  # lone carriage returns
    assert (code, line) == ("E001", 1)
    found = errors(
        "machine M over t { input n : ids(4)\n input x : 4\n output y : 4\n"
        " e : x -> n = identity\n o : x -> y = identity }"
    )
    assert [c for c, *_ in found] == ["E019"]
    agrees_over_time(
        tmp_path,
        "machine Block { input x : 8\n output y : 8\n e : x -> y = linear }\n"
        "machine Net over t { input x : 3\n space z : 8\n output m : 8\n"
        " dec : x × m[t-1] -> z = linear\n stem : z -> m = Block }\n",
    )


def agrees_over_time(tmp_path: Path, text: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The last machine of ``text`` (one input, one output), in float64: its forward on 2
    sequences of 4 steps equals its resolvent; the model and those inputs."""
    source = tmp_path / "machine.mach"
    source.write_text(text)
    module = machc.load(source)
    cls = [v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "SPACES")][-1]
    model = cls().double()
    (name,), (out,) = cls.INPUTS, cls.OUTPUTS
    x = torch.randn(2, 4, *cls.SPACES[name], dtype=torch.float64)
    torch.testing.assert_close(model(x), model.resolvent({name: x})[out])
    return model, x


def test_a_backward_recurrence_through_a_machine_over_time_runs_without_lengths(
    tmp_path: Path,
) -> None:
    # the step loop of a machine used as an edge, with its state, reading a later step:
    # forward without lengths= unfolded a mask that is None (fuzzer, seed 53)
    model, x = agrees_over_time(
        tmp_path,
        "machine Inner over t { input x : 6\n output y : 6\n f : x -> y = linear }\n"
        "machine Outer over t { input w : 6\n space f : 6\n space q : 6\n output n : 6\n"
        " read : w × q[t+1] -> f = linear\n head : f -> q = Inner\n out : q -> n = linear }\n",
    )
    short = model(x, lengths=torch.tensor([4, 2]))  # the second sequence is 2 steps long
    torch.testing.assert_close(short[1, :2], model(x[1:, :2])[0])


@pytest.mark.parametrize(
    ("source", "code"),
    [
        # a size symbol named like the adjoint's argument (found by the fuzzer, seed 29)
        (
            "machine M { input x : [2, cotangent]\n output y : [2, cotangent]\n"
            " e : x -> y = conv(3, padding=1) }",
            "E022",
        ),
        # flatten of a symbolic axis after the channel-changing op (seed 29)
        (
            "machine Net { input l1 : [1, L]\n space m : [3]\n"
            ' enc : l1 -> m = layernorm(affine=false, axes="channels") | conv(1) | flatten }',
            None,
        ),
        # upsample by a fractional scale of a size known at call time (seed 31)
        (
            "machine Up { input v : [3, H, W]\n output m : [8, H, W]\n"
            " mix : v -> m = upsample(0.1) | conv(1) }",
            "E009",
        ),
    ],
)
def test_fuzzer_findings_get_a_diagnostic(source: str, code: str | None) -> None:
    found = errors(source)
    assert found and (code is None or found[0][0] == code), found
