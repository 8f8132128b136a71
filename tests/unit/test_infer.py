"""Shapes left out and inferred from the writers; blocks checked where they are used."""

from __future__ import annotations

import json
import re

import pytest
from machc import ir
from machc.cli import main
from machc.diagnostics import Code, CompileError, Severity
from machc.driver import check_source, compile_source
from machc.fmt import format_source
from machc.info import program_info


def shapes(text: str, name: str | None = None, params=None) -> dict[str, ir.Shape]:
    """The shape of every space of machine ``name`` (default: the file's last)."""
    program = check_source(text, "t.mach", params).program
    machines = [c.machine for c in program.machines]
    chosen = next(m for m in machines if m.key == name) if name else machines[-1]
    return {space.name: space.shape for space in chosen.spaces}


def errors(text: str, **kwargs) -> list:
    with pytest.raises(CompileError) as caught:
        check_source(text, "t.mach", **kwargs)
    return caught.value.errors


def declared_and_left_out(declared: str) -> tuple[str, str]:
    """A source, and the same with the shapes of its hidden spaces and outputs left out
    (the lines stay where they are, so that generated code can be compared)."""
    left_out = re.sub(r"^(\s*(?:space|output)\s+\S+?)\s*:\s*[^#\n]*", r"\1", declared, flags=re.M)
    return declared, left_out


# --- inference -----------------------------------------------------------------------


def test_a_chain_infers_in_dependency_order_whatever_the_declaration_order() -> None:
    text = """machine M {
        output y
        space c
        space b
        input x : [3, 8, 8]
        e3 : c -> y = global_avg_pool | linear(out=5)
        e2 : b -> c = conv(3, padding=1, out=4) | relu
        e1 : x -> b = maxpool(2)
    }"""
    assert shapes(text) == {"y": (5,), "c": (4, 4, 4), "b": (3, 4, 4), "x": (3, 8, 8)}


def test_arrays_loops_and_ifs_infer() -> None:
    text = """machine M(depth: int = 4) {
        input  x : 6
        space  h[1..depth]
        output y
        first : x -> h[1] = linear(out=8) | relu
        for i in 2..depth {
            if i % 2 == 0 {
                even[i] : h[i-1] -> h[i] = linear(out=8 + i) | relu
            } else {
                odd[i] : h[i-1] -> h[i] = identity
            }
        }
        head : h[1..depth] -> y = linear(out=3)
    }"""
    assert shapes(text) == {
        "x": (6,),
        "h[1]": (8,),
        "h[2]": (10,),
        "h[3]": (10,),
        "h[4]": (12,),
        "y": (3,),
    }


def test_a_loop_declaring_array_elements_without_shapes() -> None:
    text = """machine M(n: int = 3) {
        input  x : 4
        output y
        for k in 1..n {
            space c[k..k]
            cell[k] : x -> c[k] = linear(out=k)
        }
        join : c[1..n] -> y = identity
    }"""
    assert shapes(text) == {"x": (4,), "c[1]": (1,), "c[2]": (2,), "c[3]": (3,), "y": (6,)}


def test_a_machine_used_as_an_edge_gives_its_outputs_shapes() -> None:
    text = """machine Block(w: int = 4) {
        input  x : w
        space  h
        output y
        f : x -> h = linear(out=3 * w) | relu
        g : h -> y = linear(out=w + 1)
    }
    machine Net {
        input  x : 4
        space  a
        output y
        b1 : x -> a = Block
        b2 : a -> y = Block(w=5)
    }"""
    assert shapes(text) == {"x": (4,), "a": (5,), "y": (6,)}
    assert shapes(text, "Block") == {"x": (4,), "h": (12,), "y": (5,)}
    assert shapes(text, "Block_w5") == {"x": (5,), "h": (15,), "y": (6,)}


def test_one_output_of_a_split_takes_the_channels_left() -> None:
    text = """machine M {
        input  x : [6, 4, 4]
        space  a : [2, 4, 4]
        space  b
        output y : 3
        split : x -> a × b = identity
        head  : a × b -> y = global_avg_pool | linear
    }"""
    assert shapes(text)["b"] == (4, 4, 4)
    text = text.replace("space  a : [2, 4, 4]", "space  a : [6, 4, 4]")
    (error,) = errors(text)
    assert error.code is Code.SHAPE
    assert "leaves none for 'b'" in error.message


def test_a_writer_that_takes_its_size_from_the_outputs_follows_the_others() -> None:
    text = """machine M {
        input  x : 4
        space  u
        output y
        g    : x -> u = linear(out=6) | relu
        proj : x -> u = linear(bias=false)
        out  : u -> y = identity
        skip : u -> y = identity
    }"""
    assert shapes(text) == {"x": (4,), "u": (6,), "y": (6,)}


def test_over_time_recurrences_ids_and_attention_infer() -> None:
    text = """machine M over t {
        input  tok : ids(20)
        space  e
        space  q
        space  k
        space  v
        space  u
        space  h
        output y
        emb  : tok -> e = embedding(out=8)
        qkv  : e -> q × k × v = linear(out=24)
        q1   : e -> q = identity
        k1   : e -> k = identity
        att  : q × k[0..t] × v[0..t] -> u = attention(heads=2)
        rec  : u × h[t-1] -> h = linear | tanh
        init : u -> h = linear(out=5)
        head : h -> y = linear(out=2)
    }"""
    assert shapes(text) == {
        "tok": (),
        "e": (8,),
        "q": (8,),
        "k": (8,),
        "v": (8,),
        "u": (8,),
        "h": (5,),
        "y": (2,),
    }


def test_left_out_and_declared_shapes_generate_the_same_code() -> None:
    declared, left_out = declared_and_left_out(
        """machine M(c: int = 4) {
        input  img : [3, 16, 16]
        space  a   : [c, 16, 16]
        space  b   : [c, 8, 8]
        space  h[1..2] : [2 * c, 8, 8]
        output y   : 10

        stem : img -> a = conv(3, padding=1, out=c) | relu
        down : a -> b = maxpool(2)
        h1   : b -> h[1] = conv(3, padding=1, out=2 * c) | relu
        h2   : h[1] -> h[2] = conv(3, padding=1, out=2 * c)
        skip : h[1] -> h[2] = identity
        head : h[2] -> y = global_avg_pool | linear(out=10)
    }"""
    )
    assert "space  a\n" in left_out and "output y\n" in left_out
    code = compile_source(left_out, "t.mach")
    assert code == compile_source(declared, "t.mach")
    assert '"a": (4, 16, 16)' in code and '"h[2]": (8, 8, 8)' in code


def test_info_and_ir_show_inferred_shapes(tmp_path, capsys) -> None:
    text = """machine M {
        input  x : 4
        space  h
        output y
        e : x -> h = linear(out=7) | relu
        f : h -> y = linear(out=2)
    }"""
    (info,) = program_info(check_source(text, "t.mach").program)
    assert [(s.name, s.shape) for s in info.spaces] == [("x", [4]), ("h", [7]), ("y", [2])]
    path = tmp_path / "m.mach"
    path.write_text(text)
    assert main(["ir", str(path)]) == 0
    program = json.loads(capsys.readouterr().out)
    assert [s["shape"] for s in program["machines"][0]["machine"]["spaces"]] == [[4], [7], [2]]
    assert main(["check", str(path)]) == 0
    assert "h      space   [7]" in capsys.readouterr().out


def test_fmt_keeps_a_shape_left_out() -> None:
    text = "machine M {\n  input x : 4\n  space h[1..2]\n  output   y\n  e : x -> h[1] = linear(out=4)\n  f : h[1] -> h[2] = relu\n  g : h[1..2] -> y = identity\n}\n"  # noqa: E501
    formatted = format_source(text)
    assert "    space  h[1..2]\n    output y\n" in formatted
    assert format_source(formatted) == formatted
    assert shapes(formatted) == shapes(text)


# --- what cannot be inferred -----------------------------------------------------------


def test_writers_that_disagree_are_named_with_their_shapes() -> None:
    (error,) = errors(
        """machine M {
        input  x : 4
        space  a
        output y : 2
        wide   : x -> a = linear(out=8)
        narrow : x -> a = linear(out=6)
        head   : a -> y = linear
    }"""
    )
    assert error.code is Code.INFERENCE
    assert "'wide' [8], 'narrow' [6]" in error.message
    assert (error.span.line, error.span.column) == (3, 16)
    assert [(n.message, n.span.line) for n in error.notes] == [
        ("edge 'wide' produces [8]", 5),
        ("edge 'narrow' produces [6]", 6),
    ]


def test_a_space_nothing_can_size_is_an_error_saying_to_declare_it() -> None:
    found = errors(
        """machine M {
        input  x : 4
        space  never
        space  sized
        space  after
        output y : 2
        e : x -> sized = linear | relu
        f : sized -> after = identity
        g : x -> y = linear
    }"""
    )
    assert [(e.code, e.span.line) for e in found] == [(Code.INFERENCE, 3), (Code.INFERENCE, 4)]
    assert "no edge writes it" in found[0].message
    assert "declare its shape" in found[1].hint and "linear(out=N)" in found[1].hint
    assert "linear takes its size from the edge's outputs" in found[1].notes[0].message
    # 'after' waits on 'sized': not reported again


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("c : z × x -> z = linear(out=4) | tanh\n solve z with anderson", "z -> c -> z"),
        (
            "space w\n a : x × w -> z = linear(out=4)\n b : z -> w = tanh\n solve z with anderson",
            "z -> b -> w -> a -> z",
        ),
    ],
)
def test_a_shape_that_depends_on_itself_cannot_be_inferred(body: str, path: str) -> None:
    found = errors(
        f"""machine M {{
        input  x : 4
        space  z
        output y : 2
        {body}
        h : z -> y = linear
    }}"""
    )
    assert [e.code for e in found] == [Code.INFERENCE]
    assert f"depends on itself ({path})" in found[0].message
    assert "declare its shape" in found[0].hint


def test_a_recurrence_over_time_needs_a_shape_unless_another_writer_tells_it() -> None:
    text = """machine M over t {
        input  x : 4
        space  h
        output y : 2
        rec  : x × h[t-1] -> h = linear(out=8) | tanh
        head : h -> y = linear
    }"""
    (error,) = errors(text)
    assert "depends on itself (h -> rec -> h)" in error.message
    assert error.notes[0].message == "edge 'rec' reads h[t-1] and writes h"
    told = text.replace("head :", "init : x -> h = linear(out=8)\n head :")
    assert shapes(told)["h"] == (8,)


def test_an_input_needs_a_shape() -> None:
    (error,) = errors("machine M {\n input x\n output y : 2\n e : x -> y = linear\n}")
    assert error.code is Code.INFERENCE
    assert error.message.startswith("input 'x' needs a shape")


def test_an_edge_that_writes_several_spaces_without_shapes() -> None:
    found = errors(
        """machine M {
        input  x : 4
        space  a
        space  b
        output y : 4
        split : x -> a × b = identity
        join  : a × b -> y = identity
    }"""
    )
    assert [e.span.line for e in found] == [3, 4]
    assert found[0].notes[0].message == "edge 'split' writes several spaces without a shape: a, b"


def test_a_pipeline_error_while_inferring_is_a_shape_error_reported_once() -> None:
    (error,) = errors(
        """machine M {
        input  x : [3, 4, 4]
        space  a
        output y : 2
        e : x -> a = conv(7, out=2)
        f : a -> y = global_avg_pool | linear
    }"""
    )
    assert error.code is Code.SHAPE and "kernel" in error.message


# --- blocks checked where they are used -------------------------------------------------

BLOCKS = """machine DenseBlock(c: int, k: int = 2) {
    input  x : c
    space  h
    output y : c
    f : x -> h = linear(out=k * c) | relu
    g : h -> y = linear
}

machine Spare(n: int) {
    input  x : n
    output y : n
    e : x -> y = identity
}

machine Net {
    input  x : 16
    space  a
    space  b
    output y
    b1 : x -> a = DenseBlock(c=16)
    p  : a -> b = linear(out=8)
    b2 : b -> y = DenseBlock(c=8, k=3)
}
"""


def test_a_block_without_defaults_is_checked_with_each_use() -> None:
    checked = check_source(BLOCKS, "t.mach")
    keys = [c.machine.key for c in checked.program.machines]
    assert keys == ["DenseBlock_c16_k2", "DenseBlock_c8_k3", "Net"]
    assert shapes(BLOCKS, "DenseBlock_c8_k3")["h"] == (24,)
    assert shapes(BLOCKS) == {"x": (16,), "a": (16,), "b": (8,), "y": (8,)}
    (warning,) = checked.warnings
    assert warning.code is Code.UNCHECKED_MACHINE and warning.severity is Severity.WARNING
    assert warning.message == (
        "machine Spare is never used, and cannot be checked alone: parameter 'n' has no default"
    )
    code = compile_source(BLOCKS.replace("machine Spare(n: int)", "machine Spare(n: int = 2)"))
    assert "class DenseBlock_c16_k2(nn.Module)" in code and "class DenseBlock(" not in code


def test_an_error_in_a_block_is_reported_with_the_use() -> None:
    (error,) = errors(BLOCKS.replace("DenseBlock(c=8, k=3)", "DenseBlock(c=8, k=0)"))
    assert error.code is Code.OP_ARGUMENT and error.span.line == 5
    assert error.notes[-1].message == "in DenseBlock(c=8, k=0), used as an edge here"


def test_the_machine_asked_for_still_needs_its_values() -> None:
    last = BLOCKS + "\nmachine Last(w: int) {\n input x : w\n output y : w\n e : x -> y = relu\n}\n"
    (error,) = errors(last)
    assert error.code is Code.PARAMETER
    assert error.message == "parameter 'w' of Last has no default and no value"
    assert shapes(last, "Last", params={"w": 3}) == {"x": (3,), "y": (3,)}
    # --machine names another machine: Last is then only unused
    checked = check_source(last, "t.mach", machine="Net")
    assert {w.message.split(" is")[0] for w in checked.warnings} == {
        "machine Spare",
        "machine Last",
    }
    (error,) = errors(BLOCKS, machine="Spare")
    assert error.message == "parameter 'n' of Spare has no default and no value"
    # a value given from outside checks it on its own, as always
    assert shapes(BLOCKS, "Spare", params={"Spare.n": 5}) == {"x": (5,), "y": (5,)}


def test_a_last_machine_that_is_used_is_checked_where_it_is_used() -> None:
    text = """machine Net {
        input  x : 4
        output y
        e : x -> y = Block(c=4)
    }
    machine Block(c: int) {
        input  x : c
        output y : c
        e : x -> y = linear
    }"""
    checked = check_source(text, "t.mach")
    assert [c.machine.key for c in checked.program.machines] == ["Block_c4", "Net"]
    assert not checked.warnings


def test_graph_asks_for_the_machine_it_draws(tmp_path, capsys) -> None:
    path = tmp_path / "blocks.mach"
    path.write_text(BLOCKS)
    assert main(["graph", str(path), "--machine", "Spare"]) == 1
    assert "parameter 'n' of Spare has no default and no value" in capsys.readouterr().err
    assert main(["graph", str(path), "--machine", "DenseBlock"]) == 0  # its two uses
    drawn = capsys.readouterr()
    assert "DenseBlock(c=16, k=2)" in drawn.out and "DenseBlock(c=8, k=3)" in drawn.out
    assert "machine Spare is never used" in drawn.err
