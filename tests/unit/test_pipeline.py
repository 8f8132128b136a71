"""The compiler's stages without torch: parameters, loops, names, structure, IR, safety."""

from __future__ import annotations

import ast
import gc
import json
import subprocess
import sys
from pathlib import Path

import machc
import pydantic
import pytest
from machc import ir
from machc.diagnostics import CompileError
from machc.driver import check_source
from machc.names import Namespace, sanitize

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))


def machine(text: str, params=None) -> ir.CheckedMachine:
    (checked,) = check_source(text, "t.mach", params).program.machines
    return checked


DENSE = (ROOT / "examples" / "dense.mach").read_text()


def test_parameters_from_defaults_api_and_text() -> None:
    assert machine(DENSE).machine.params == {"depth": 4, "width": 32}
    bound = machine(DENSE, {"depth": 2, "DenseMachine.width": "8"}).machine
    assert bound.params == {"depth": 2, "width": 8}
    assert [s.name for s in bound.spaces] == ["x", "h[1]", "h[2]", "y"]
    assert bound.space("h[2]").shape == (8,)


def test_qualified_parameter_wins_over_plain() -> None:
    bound = machine(DENSE, {"depth": 2, "DenseMachine.depth": 3}).machine
    assert bound.params["depth"] == 3


def test_defaults_may_use_earlier_parameters_and_floats_bools() -> None:
    text = """machine M(n: int = 3, m: int = n * 2 + 1, p: float = 0.25, b: bool = false) {
        input x : n
        output y : m
        e : x -> y = linear(bias=b) | dropout(p)
    }"""
    checked = machine(text)
    assert checked.machine.params == {"n": 3, "m": 7, "p": 0.25, "b": False}
    op_linear, op_dropout = checked.machine.edges[0].ops
    assert op_linear.args == {"bias": False, "spectral_norm": False}
    assert op_dropout.args == {"p": 0.25}


def test_loops_ranges_and_empty_products() -> None:
    text = """machine M(n: int = 3) {
        input x : 2
        space h[1..n] : 4
        space none[1..0] : 4
        output y : 4
        for i in 1..n {
            for j in i..i {
                g[i] : x × h[1..j-1] × none[1..0] -> h[j] = linear
            }
        }
        head : h[n] -> y = linear
    }"""
    checked = machine(text)
    edges = {e.name: [p.space for p in e.inputs] for e in checked.machine.edges}
    assert edges == {
        "g[1]": ["x"],
        "g[2]": ["x", "h[1]"],
        "g[3]": ["x", "h[1]", "h[2]"],
        "head": ["h[3]"],
    }
    assert checked.structure.shapes["g[3]"] == ((10,), (4,))


def test_arithmetic() -> None:
    text = """machine M(w: int = 10) {
        input x : w // 3 + (2 - -1) * 2
        output y : -(-w) - 1
        e : x -> y = linear
    }"""
    sizes = [s.shape for s in machine(text).machine.spaces]
    assert sizes == [(9,), (9,)]


def test_structure_of_the_hypergraph_example() -> None:
    checked = machine((ROOT / "examples" / "hypergraph.mach").read_text())
    s = checked.structure
    assert s.depth == {"X1": 0, "X2": 0, "X3": 1, "X4": 2, "X5": 3, "X6": 3, "X7": 3, "X8": 4}
    assert s.levels == (("f1", "f2"), ("f3",), ("f4",), ("f5",))
    assert s.order == ("f1", "f2", "f3", "f4", "f5")


def test_dependency_order_is_by_level_then_declaration() -> None:
    text = """machine M {
        input x : 2
        space a : 2
        output y : 2
        late  : a -> y = linear
        early : x -> a = linear
        also  : x -> y = linear
    }"""
    s = machine(text).structure
    assert s.order == ("early", "also", "late")
    assert s.levels == (("early", "also"), ("late",))


def test_every_error_of_a_file_is_reported() -> None:
    text = """machine A {
        input x : 2
        output y : 2
        e : x -> y = lnear
    }
    machine B {
        input x : 2
        space a : 2
        output y : 2
        f : a -> a = linear
        g : a -> y = linear
        h : x -> y = identity | relu | linear(out=3)
    }"""
    with pytest.raises(CompileError) as info:
        check_source(text, "t.mach")
    messages = [d.message for d in info.value.errors]
    assert len(messages) == 3, messages
    assert "unknown op 'lnear'" in messages[0]
    assert messages[1] == "cycle: a -> f -> a"
    assert "produces [3], but the outputs need [2]" in messages[2]


def test_ir_round_trips_through_json() -> None:
    for path in EXAMPLES:
        program = check_source(path.read_text(), str(path)).program
        text = program.model_dump_json()
        assert ir.CheckedProgram.model_validate_json(text) == program
        json.loads(text)


def test_ir_is_frozen_and_closed() -> None:
    checked = machine(DENSE)
    with pytest.raises(pydantic.ValidationError):
        checked.machine.name = "Other"
    span = checked.machine.span
    with pytest.raises(TypeError, match="Port: no field 'weight'"):
        ir.Port(space="x", span=span, weight=1)  # the compiler's own records: not validated
    with pytest.raises(TypeError, match="Port: no value for field 'space'"):
        ir.Port(span=span)
    with pytest.raises(pydantic.ValidationError):  # what is read back is validated
        ir.Port.model_validate({"space": "x", "span": span, "weight": 1})
    with pytest.raises(pydantic.ValidationError):
        ir.Port.model_validate({"space": 3, "span": span})


def test_records_are_made_as_validation_would_make_them() -> None:
    """The tests run with MACHC_VERIFY_IR=1: a record the compiler makes with a value that
    validation would convert (a list for a tuple, a string for an enum) is an error where
    it is made, not a difference that shows later."""
    from machc import record

    assert record.VERIFY
    span = machine(DENSE).machine.span
    with pytest.raises(TypeError, match=r"Machine.edges is made as \[\]"):
        ir.Machine(name="M", params={}, spaces=(), edges=[], span=span)
    with pytest.raises(TypeError, match="Space.role is made as 'input'"):
        ir.Space(name="x", role="input", shape=(4,), span=span)
    with pytest.raises(pydantic.ValidationError):  # and one validation rejects is too
        ir.Space(name=3, role=ir.Role.INPUT, shape=(4,), span=span)
    space = ir.Space(name="x", role=ir.Role.INPUT, shape=(4,), span=span)
    assert ir.Space.model_validate(space.model_dump()) == space


def test_what_every_pass_of_a_loop_makes_alike_is_one_object() -> None:
    m = machine(
        "machine D { input x : 4\n space h[1..2] : 4\n output y : 4\n"
        " for i in 1..2 { d[i] : x -> h[i] = linear | dropout(0.25 * i) }\n"
        " e : h[1] × h[2] -> y = linear }"
    ).machine
    d1, d2, e = m.edges
    assert d1.ops[0] is d2.ops[0]  # linear, with the same arguments in both passes
    assert (d1.ops[1].args, d2.ops[1].args) == ({"p": 0.25}, {"p": 0.5})
    assert e.ops[0] is not d1.ops[0]  # another call of linear
    # a port of an array names its space with the space's own string
    assert e.inputs[1].space is m.space("h[2]").name is d2.outputs[0].space


def test_the_garbage_collector_is_paused_while_machc_runs(monkeypatch) -> None:
    from machc import driver

    seen = []
    build = driver.build
    monkeypatch.setattr(
        driver, "build", lambda *a, **k: seen.append(gc.isenabled()) or build(*a, **k)
    )
    assert gc.isenabled()
    machc.compile_source(DENSE, "dense.mach")
    with pytest.raises(CompileError):
        check_source("machine M { input x : 4 }", "m.mach")
    assert seen == [False, False] and gc.isenabled()  # and on again after an error
    gc.disable()
    try:
        check_source(DENSE, "dense.mach")
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_sanitize_and_namespace() -> None:
    assert sanitize("h[2]") == "h_2"
    assert sanitize("h[-1]") == "h_m1"
    assert sanitize("class") == "class_"
    assert sanitize("match") == "match_"
    names = Namespace(frozenset({"f", "self"}))
    assert names.name("f") == "f_"
    assert names.name("h[2]") == "h_2"
    assert names.name("h_2") == "h_2_"
    assert names.name("self") == "self_"
    assert names.name("h[2]") == "h_2"  # stable per key


def test_names_from_source_cannot_break_generated_code() -> None:
    # Python keywords, builtins and the names generated code relies on, used as spaces and edges.
    text = """machine Evil(self: int = 2) {
        input  class : 2
        input  torch : 2
        space  lambda[1..2] : 3
        output F : 2
        output state : 2

        forward   : class × torch -> lambda[1] = linear | relu
        training  : lambda[1] -> lambda[2] = linear
        f         : lambda[2] -> F = linear
        resolvent : lambda[2] × class -> state = linear
        x0        : class -> state = identity
    }"""
    source = machc.compile_source(text, "evil\r\nimport os #.mach")
    tree = ast.parse(source)
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports == [
        "from __future__ import annotations",
        "from typing import NamedTuple",
        "import torch",
        "from torch import Tensor, nn",
    ]
    assert "\r" not in source
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Evil"]
    methods = [n.name for n in cls.body if isinstance(n, ast.FunctionDef)]
    assert methods == [
        "__init__",
        "forward",
        "f",
        "resolvent",
        "adjoint",
        "example_inputs",
        "reset_parameters",
    ]


def test_generated_modules_are_valid_python() -> None:
    for path in EXAMPLES:
        ast.parse(machc.compile_file(path))


def test_compiler_never_imports_torch() -> None:
    code = (
        "import sys, machc, machc.cli\n"
        f"for p in {[str(p) for p in EXAMPLES]!r}:\n"
        "    machc.compile_file(p)\n"
        "machc.cli.main(['check', '-q', p])\n"
        "assert 'torch' not in sys.modules, 'the compiler imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_runtime_never_imports_the_compiler() -> None:
    code = (
        "import sys, machc.runtime\n"
        "loaded = {m for m in ('lark', 'pydantic', 'networkx', 'jinja2', 'machc.driver')"
        " if m in sys.modules}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_api_reports_warnings_through_the_warnings_module() -> None:
    text = (ROOT / "tests" / "golden" / "diagnostics" / "warn_unused.mach").read_text()
    with pytest.warns(machc.MachcWarning, match="input 'x2' is never read") as record:
        machc.compile_source(text, "warn_unused.mach")
    assert len(record) == 2
    assert record[0].filename == __file__  # points at the caller, not at machc
