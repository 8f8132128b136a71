"""`machc graph` without the command line: DOT text, ranks, the weight picture, the lexer."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from machc.driver import check_file, check_source
from machc.graph import _html, _quoted, own_machines, render, select, to_dot
from machc.matrix import MAX_UNITS, MatrixError, matrix_text, picture

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))
TWO_MACHINES = """
machine A {
    input  x : 4
    output y : 2
    e : x -> y = linear
}
machine B(n: int = 3) {
    input  a : 4
    input  b : 4
    output c : n
    output d : 5
    e : a × b -> c × d = linear | tanh
}
"""
SEQUENCES = ROOT / "tests" / "golden" / "sequences.mach"  # reads of later steps, windows, ids
MACH_BLOCK = re.compile(r"^```mach\n(.*?)^```", re.S | re.M)
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def test_labels_escape_markup_and_quotes() -> None:
    assert _html("<b>&\"x'") == "&lt;b&gt;&amp;&quot;x&#x27;"
    assert _html("a\nb") == "a&#10;b"
    assert _quoted('say "hi" \\') == '"say \\"hi\\" \\\\"'
    assert _quoted("two\nlines") == '"two?lines"'


def test_one_machine_is_drawn_alone_several_in_clusters() -> None:
    program = check_source(TWO_MACHINES, "two.mach").program
    both = to_dot(program)
    assert "subgraph cluster_m0 {" in both and "subgraph cluster_m1 {" in both
    assert 'label="machine B(n=3)";' in both
    only_b = to_dot(program, ["B"])
    assert "cluster" not in only_b
    assert 'label="machine B(n=3)";' in only_b and "machine A" not in only_b
    # a × b -> c × d: both inputs into the box, the box into both outputs
    for arrow in ("m0_s0 -> m0_e0", "m0_s1 -> m0_e0", "m0_e0 -> m0_s2", "m0_e0 -> m0_s3"):
        assert arrow in only_b


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_ranks_follow_depths_and_levels(example: Path) -> None:
    program = check_file(example).program
    dot = to_dot(program)
    column: dict[str, int] = {}  # node id -> its column: 2·depth for spaces, 2·level-1 for edges
    for m, checked in enumerate(own_machines(program)):
        structure = checked.structure
        level = {name: k for k, names in enumerate(structure.levels, 1) for name in names}
        for i, space in enumerate(checked.machine.spaces):
            column[f"m{m}_s{i}"] = 2 * structure.depth[space.name]
        for i, edge in enumerate(checked.machine.edges):
            column[f"m{m}_e{i}"] = 2 * level[edge.name] - 1
        column[f"m{m}_t"] = 0  # the step number, where a position embedding reads it
    for group in re.findall(r"\{ rank=same; ([^}]*) \}", dot):
        assert len({column[node] for node in group.split()}) == 1, group


def test_dot_is_deterministic() -> None:
    for example in EXAMPLES:
        assert to_dot(check_file(example).program) == to_dot(check_file(example).program)


@needs_dot
@pytest.mark.parametrize(
    "example", [*EXAMPLES, SEQUENCES, "two"], ids=lambda p: getattr(p, "name", p)
)
def test_graphviz_reads_the_dot_text(example) -> None:
    if example == "two":
        program = check_source(TWO_MACHINES, "two.mach").program
    else:
        program = check_file(example).program
    for expand, machines in ((False, own_machines(program)), (True, program.machines)):
        svg = render(to_dot(program, expand=expand), "svg").decode()
        assert "<svg" in svg and "Warning" not in svg
        names = [s.name for c in machines for s in c.machine.spaces]
        for name in names:
            assert f"<b>{name}</b>" in svg or f">{name}<" in svg


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_feed_forward_examples_are_strictly_block_lower_triangular(example: Path) -> None:
    for checked in check_file(example).program.machines:
        pic = picture(checked)
        index = {b.space.name: i for i, b in enumerate(pic.blocks)}
        assert pic.edges, "some edge must show"
        for target, source in pic.edges:
            # other steps and solved cycles: anywhere; the rest strictly below the diagonal
            if (target, source) not in pic.delayed | pic.future | pic.solved:
                assert index[target] > index[source], (target, source)


def test_an_edge_marks_every_output_input_pair_and_nothing_else() -> None:
    program = check_source(TWO_MACHINES, "two.mach").program
    pic = picture(program.machines[1])
    assert pic.edges == {
        ("c", "a"): ("e",),
        ("c", "b"): ("e",),
        ("d", "a"): ("e",),
        ("d", "b"): ("e",),
    }
    rows = matrix_text([pic]).splitlines()[2:]
    assert [r.split()[-4:] for r in rows] == [
        [".", ".", ".", "."],
        [".", ".", ".", "."],
        ["#", "#", ".", "."],
        ["#", "#", ".", "."],
    ]


def test_autoencoder_by_unit_is_22_by_22() -> None:
    checked = check_file(ROOT / "examples" / "autoencoder.mach").program.machines[0]
    lines = matrix_text([picture(checked, units=True)]).splitlines()
    title, names, numbers, *rows = lines
    assert title == "machine AutoEncoder, by unit: rows to, columns from"
    assert names.split() == ["x", "e", "z", "d", "y"]
    assert numbers.split() == ["012345", "0123", "01", "0123", "012345"]
    assert len(rows) == 22
    cells = [re.sub(r"^\S+ \(\w+\)\s+", "", row).replace(" ", "") for row in rows]
    assert all(len(c) == 22 and set(c) <= {"#", "."} for c in cells)
    assert rows[0].startswith("x:0 (in) ") and rows[-1].startswith("y:5 (out) ")
    # enc1 fills e × x: rows 6..9, columns 0..5; nothing at or above the diagonal
    assert all(cells[r][:6] == "######" for r in range(6, 10))
    assert all("#" not in c[r:] for r, c in enumerate(cells))
    assert sum(c.count("#") for c in cells) == 4 * 6 + 2 * 4 + 4 * 2 + 6 * 4


def test_units_are_refused_for_large_machines() -> None:
    program = check_file(ROOT / "examples" / "digits.mach").program
    assert sum(s.shape[0] for s in program.machines[0].machine.spaces) > MAX_UNITS
    with pytest.raises(MatrixError, match=f"more than {MAX_UNITS} for --units"):
        picture(program.machines[0], units=True)


def test_matrix_image_is_a_deterministic_png() -> None:
    pytest.importorskip("matplotlib")
    from machc.matrix import render as render_matrix

    pictures = [picture(c) for c in check_file(EXAMPLES[0]).program.machines]
    png = render_matrix(pictures, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert render_matrix(pictures, "svg") == render_matrix(pictures, "svg")


def test_lexer_is_registered_and_reads_every_example_without_errors() -> None:
    pygments_lexers = pytest.importorskip("pygments.lexers")
    from pygments.token import Error

    assert type(pygments_lexers.get_lexer_by_name("mach")).__name__ == "MachLexer"
    assert type(pygments_lexers.get_lexer_for_filename("dense.mach")).__name__ == "MachLexer"
    texts = [p.read_text(encoding="utf-8") for p in EXAMPLES]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        texts += MACH_BLOCK.findall(doc.read_text(encoding="utf-8"))
    assert len(texts) > len(EXAMPLES)
    lexer = pygments_lexers.get_lexer_by_name("mach")
    for text in texts:
        tokens = list(lexer.get_tokens(text))
        assert "".join(v for _, v in tokens).rstrip("\n") == text.rstrip("\n")
        assert not [v for t, v in tokens if t in Error], text


def test_lexer_token_kinds() -> None:
    pytest.importorskip("pygments")
    from machc.highlight import MachLexer
    from pygments.token import Comment, Keyword, Name, Number, Operator, String

    text = (
        "machine M(n: int = 2) {  # hi\n  input x : n\n"
        '  e[1] : x × x -> y = linear(s="a|b") | relu\n}\n'
    )
    kinds = {v: t for t, v in MachLexer().get_tokens(text) if v.strip()}
    assert kinds["machine"] is Keyword and kinds["M"] is Name.Class
    sequence = (
        "machine S over t {\n  input tok : ids(n)\n"
        "  a : q × k[..] × v[t-2..t] -> u = attention(heads=2)\n}\n"
    )
    tokens = [(t, v) for t, v in MachLexer().get_tokens(sequence) if v.strip()]
    assert (Keyword.Type, "ids") in tokens and (Name, "n") in tokens
    assert tokens.count((Operator, "..")) == 2 and (Name.Builtin, "attention") in tokens
    assert kinds["int"] is Keyword.Type and kinds["# hi"] is Comment.Single
    assert kinds["input"] is Keyword.Declaration and kinds["x"] in Name
    assert kinds["e"] is Name.Function and kinds["×"] is Operator and kinds["->"] is Operator
    assert kinds["linear"] is Name.Builtin and kinds["relu"] is Name.Builtin
    assert kinds['"a|b"'] is String.Double and kinds["2"] is Number.Integer


def test_views_import_neither_torch_nor_drawing_libraries() -> None:
    code = (
        "import sys, machc.cli\n"
        f"p = {str(EXAMPLES[0])!r}\n"
        "for args in (['graph', p], ['graph', '--matrix', p], ['ir', p],\n"
        "             ['check', '--format', 'json', p]):\n"
        "    assert machc.cli.main(args) == 0\n"
        "loaded = {m for m in ('torch', 'matplotlib', 'pygments', 'numpy') if m in sys.modules}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)


def test_reads_of_earlier_steps_are_dashed_and_marked_apart() -> None:
    program = check_file(ROOT / "examples" / "elman.mach").program
    dot = to_dot(program)
    assert "label=<machine Elman(n=16, m=64) over t<br/>" in dot
    assert "dashed t-k: reads an earlier step" in dot and "later step" not in dot
    assert 'm0_s1 -> m0_e0 [style="dashed"' in dot and 'label="t-1"' in dot
    assert "m0_s0 -> m0_e0;" in dot
    pic = picture(program.machines[0])
    assert pic.delayed == {("h", "h")}
    assert matrix_text([pic]).splitlines()[3].split()[-3:] == ["#", "~", "."]


def test_reads_of_later_steps_windows_ids_and_positions_are_drawn_apart() -> None:
    program = check_file(SEQUENCES).program
    bi = to_dot(program, ["BiElman"])
    assert re.search(r'm0_s1 -> m0_e0 \[style="dashed" color="#7c3aed".*label="t-1"', bi)
    future = re.search(r"m0_s2 -> m0_e1 \[([^]]*)\]", bi).group(1)
    assert 'style="dashed"' in future and 'label="t+1"' in future
    assert 'constraint="false"' in future and "#7c3aed" not in future  # its own colour
    assert "reads an earlier step" in bi and "reads a later step" in bi and "window" not in bi
    gpt = to_dot(program, ["GPTish"])
    assert "<b>tok</b><br/>ids(256)>" in gpt and 'tooltip="input space tok ids(256)"' in gpt
    windows = re.findall(r"(m0_s\d) -> (m0_e\d) \[style=\"bold\"[^]]*label=\"([^\"]*)\"", gpt)
    assert sorted({label for *_, label in windows}) == ["..", "0..t", "t-8..t"]
    assert len(windows) == 6 and 'constraint="false"' not in "".join(
        line for line in gpt.splitlines() if 'style="bold"' in line
    )
    # the step number: one small dashed node, an input in the first column, read by pos
    assert gpt.count("m0_t [") == 1 and "<<b>t</b> (step)>" in gpt
    assert "m0_t -> m0_e1;" in gpt and "{ rank=same; m0_s0 m0_t }" in gpt
    assert "reads a window of steps" in gpt and "t (step): the step number" in gpt
    assert "dashed" not in gpt.split("m0_s0 [")[0].split("<br/>", 1)[1]  # no t-k in its legend
    plain = to_dot(check_source(TWO_MACHINES, "two.mach").program)
    assert 'label="machine A";' in plain and 'label="machine B(n=3)";' in plain  # no legend


def test_sub_machines_over_time_keep_their_own_step_number_when_expanded() -> None:
    program = check_file(SEQUENCES).program
    dot = to_dot(program, ["Stack"], expand=True)
    assert "m0_e0_t [" in dot and "m0_e0_t -> m0_e0_e0;" in dot  # Attend's pos, inside a
    assert "t (step): the step number" in dot.splitlines()[4]  # the title's legend
    assert "t-4..t" in dot and "dashed t-k" in dot.splitlines()[4]


def test_matrix_marks_later_steps_and_windows_apart() -> None:
    machines = {c.machine.name: c for c in check_file(SEQUENCES).program.machines}
    bi = picture(machines["BiElman"])
    assert bi.delayed == {("hf", "hf")} and bi.future == {("hb", "hb")} and not bi.windows
    title, _, *rows = matrix_text([bi]).splitlines()
    assert title.endswith("; ~ reads an earlier time step; + reads a later time step")
    assert [row.split()[2:] for row in rows] == [
        [".", ".", ".", "."],
        ["#", "~", ".", "."],
        ["#", ".", "+", "."],
        [".", "#", "#", "."],
    ]
    gpt = picture(machines["GPTish"])
    assert gpt.windows == {("u", "k"), ("u", "v")} and not gpt.delayed | gpt.future
    assert gpt.edges[("u", "k")] == ("attn", "win", "all") and gpt.positions == ("pos",)
    lines = matrix_text([gpt]).splitlines()
    assert lines[0].endswith("; = reads a window of time steps")
    assert lines[7].split()[2:] == [".", ".", "#", "=", "=", ".", "."]
    assert lines[-1] == "pos also reads the step number t (no space)"
    assert not any(b.space.name == "t" for b in gpt.blocks)


def test_an_ids_space_has_one_unit_per_id() -> None:
    program = check_file(SEQUENCES, {"GPTish.vocab": 6, "GPTish.d": 4}).program
    gpt = next(c for c in program.machines if c.machine.name == "GPTish")
    lines = matrix_text([picture(gpt, units=True)]).splitlines()
    assert lines[2].split()[0] == "012345"  # tok: ids(6), one-hot vectors of size 6
    assert lines[3].startswith("tok:0 (in) ") and lines[9].startswith("h:0 (hidden) ")


def test_matrix_pictures_hatch_each_kind_of_read_their_own_way() -> None:
    pytest.importorskip("matplotlib")
    from machc.matrix import render as render_matrix

    pictures = [picture(c) for c in check_file(SEQUENCES).program.machines]
    svg = render_matrix(pictures, "svg").decode()
    texts = re.findall(r"<!-- (.*?) -->", svg)  # matplotlib draws glyphs, text in comments
    assert "hatched ///: reads an earlier time step" in texts
    assert "hatched \\\\\\: reads a later time step" in texts
    assert "cross-hatched: reads a window of time steps" in texts
    assert "pos also reads the step number t (no space)" in texts
    assert len(set(re.findall(r'<pattern id="(h[0-9a-f]+)"', svg))) >= 3  # hatch patterns


NESTED = """
machine Blk(w: int = 4) {
    input  x : w
    output y : w
    f : x -> y = linear | relu
}

machine Two(w: int = 4) {
    input  x : w
    space  h : w
    output y : w
    f : x -> h = Blk(w=w)
    g : h -> y = shared(f)
}

machine Top {
    input  x : 4
    space  a : 4
    space  b : 8
    output y : 8
    p : x -> a = Two(w=4)
    q : a -> b = linear(8)
    r : b -> y = Blk(w=8)
}
"""
LOOP = """
machine Pair {
    input  a : 4
    input  b : 4
    output y : 4
    f : a × b -> y = linear | tanh
}

machine Loop over t {
    input  x : 4
    space  h : 4
    output y : 2
    step : x × h[t-1] -> h = Pair
    out  : h -> y = linear
}
"""


def _clusters(dot: str) -> dict[str, list[str]]:
    """Cluster name -> the lines inside it (nested clusters included)."""
    inside: dict[str, list[str]] = {}
    open_: list[str] = []
    for line in dot.splitlines():
        text = line.strip()
        if text.startswith("subgraph cluster_"):
            open_.append(text.split()[1])
            inside[open_[-1]] = []
        elif text == "}" and open_:
            open_.pop()
        else:
            for name in open_:
                inside[name].append(text)
    return inside


def _declared(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.match(r"\s*(\w+) \[label=", line))]


def test_default_draws_the_files_own_machines_with_sub_machines_as_boxes() -> None:
    program = check_file(ROOT / "examples" / "net.mach").program
    assert [c.machine.key for c in program.machines] == ["ResBlock", "Net"]
    assert [c.machine.key for c in own_machines(program)] == ["Net"]
    dot = to_dot(program)
    assert "cluster" not in dot and "machine ResBlock" not in dot
    assert 'label="machine Net(w=32)";' in dot
    blk1 = next(line for line in dot.splitlines() if line.startswith("  m0_e1 ["))
    assert "<b>blk1</b>" in blk1 and "ResBlock(w=32)" in blk1 and 'peripheries="2"' in blk1
    tied = next(line for line in dot.splitlines() if line.startswith("  m0_e3 ["))
    assert "shared(blk2)" in tied and "ResBlock(w=32)" in tied and "dashed" in tied
    assert re.search(r'm0_e2 -> m0_e3 \[style="dotted".* label="shares blk2"', dot)
    # the machine of a sub-machine edge maps its input into its output, like any edge
    assert picture(own_machines(program)[0]).edges[("b", "a")] == ("blk1",)
    assert picture(own_machines(program)[0]).edges[("c2", "c")] == ("tied",)


def test_select_picks_own_machines_then_instances_by_name_then_by_key() -> None:
    program = check_source(NESTED, "nested.mach").program
    keys = [c.machine.key for c in program.machines]
    assert keys == ["Blk_w8", "Blk", "Two", "Top"]
    assert [c.machine.key for c in own_machines(program)] == ["Blk", "Two", "Top"]
    assert [c.machine.key for c in select(program)] == ["Blk", "Two", "Top"]
    assert [c.machine.key for c in select(program, "Blk")] == ["Blk"]
    assert [c.machine.key for c in select(program, "Blk_w8")] == ["Blk_w8"]
    assert select(program, "Nope") == []
    tour = check_file(ROOT / "examples" / "std_tour.mach").program
    assert [c.machine.key for c in select(tour, "LSTM")] == ["LSTM"]
    assert re.search(r"machine LSTM\(n=4, m=8[^)]*\) over t", to_dot(tour, ["LSTM"]))


def test_expand_puts_each_instance_inside_its_cluster_with_unique_ids() -> None:
    program = check_source(NESTED, "nested.mach").program
    dot = to_dot(program, ["Top"], expand=True)
    clusters = _clusters(dot)
    # p = Two(w=4) holds f = Blk(w=4) and g = shared(f); r = Blk(w=8)
    assert set(clusters) == {
        "cluster_m0_e0",
        "cluster_m0_e0_e0",
        "cluster_m0_e0_e1",
        "cluster_m0_e2",
    }
    assert _declared(clusters["cluster_m0_e0"]) == [
        "m0_e0_s0",
        "m0_e0_s1",
        "m0_e0_s2",
        "m0_e0_e0_s0",
        "m0_e0_e0_s1",
        "m0_e0_e0_e0",
        "m0_e0_e1_s0",
        "m0_e0_e1_s1",
        "m0_e0_e1_e0",
    ]
    assert _declared(clusters["cluster_m0_e0_e0"]) == ["m0_e0_e0_s0", "m0_e0_e0_s1", "m0_e0_e0_e0"]
    assert _declared(clusters["cluster_m0_e2"]) == ["m0_e2_s0", "m0_e2_s1", "m0_e2_e0"]
    assert "<b>p</b> = Two(w=4)" in dot and "<b>r</b> = Blk(w=8)" in dot
    assert "<b>g</b> = shared(f): Blk(w=4)" in dot
    # the parent's spaces feed the instance's inputs, its outputs feed the parent's spaces
    for arrow in (
        "m0_s0 -> m0_e0_s0",  # Top.x -> p.x
        "m0_e0_s2 -> m0_s1",  # p.y -> Top.a
        "m0_e0_s0 -> m0_e0_e0_s0",  # p.x -> p.f.x
        "m0_e0_e0_s1 -> m0_e0_s1",  # p.f.y -> p.h
        "m0_s2 -> m0_e2_s0",  # Top.b -> r.x
        "m0_e2_s1 -> m0_s3",  # r.y -> Top.y
    ):
        assert f"  {arrow} [" in dot, arrow
    assert 'ltail="cluster_m0_e0_e0" lhead="cluster_m0_e0_e1"' in dot
    if shutil.which("dot"):
        assert render(dot, "svg").startswith(b"<?xml")


@pytest.mark.parametrize("example", [*EXAMPLES, "nested", "loop"], ids=str)
def test_expanded_node_ids_are_unique_and_columns_run_left_to_right(example) -> None:
    if example in ("nested", "loop"):
        program = check_source(NESTED if example == "nested" else LOOP, "x.mach").program
    else:
        program = check_file(example).program
    dot = to_dot(program, expand=True)
    ids = _declared(dot.splitlines())
    assert len(ids) == len(set(ids))
    arrows = re.findall(r"^\s*(\w+) -> (\w+)(.*);$", dot, re.M)
    assert {n for a in arrows for n in a[:2]} <= set(ids)
    clusters = re.findall(r"subgraph (cluster_\w+)", dot)
    assert len(clusters) == len(set(clusters))
    # no arrow that orders the columns joins two nodes of one column
    column = {}
    for k, group in enumerate(re.findall(r"\{ rank=same; ([^}]*) \}", dot)):
        column.update(dict.fromkeys(group.split(), k))
    for tail, head, attrs in arrows:
        if 'constraint="false"' not in attrs and tail in column and head in column:
            assert column[tail] != column[head], (tail, head)


def test_expanded_reads_of_earlier_steps_stay_dashed_and_marked_in_the_matrix() -> None:
    program = check_source(LOOP, "loop.mach").program
    dot = to_dot(program, ["Loop"], expand=True)
    assert "m0_s0 -> m0_e0_s0 [" in dot  # x -> step.a
    assert re.search(r'm0_s1 -> m0_e0_s1 \[style="dashed".*label="t-1"', dot)  # h[t-1] -> b
    assert "m0_e0_s2 -> m0_s1 [" in dot  # step.y -> h
    pic = picture(select(program, "Loop")[0])
    assert pic.edges == {("h", "x"): ("step",), ("h", "h"): ("step",), ("y", "h"): ("out",)}
    assert pic.delayed == {("h", "h")}


def test_lexer_knows_ifs_and_the_operators_of_conditions() -> None:
    pytest.importorskip("pygments")
    from machc.highlight import MachLexer
    from pygments.token import Error, Keyword, Name, Operator

    text = (
        "machine B(s: int = 1) {\n"
        "  if s != 1 or not (s == 2 and s % 2 <= s ** 2) { p : x -> y = conv(1) }\n"
        "  else if max(s, 1) >= min(s, 2) > 0 { q : x -> y = identity } else { }\n}\n"
    )
    tokens = [(t, v) for t, v in MachLexer().get_tokens(text) if v.strip()]
    assert not [v for t, v in tokens if t in Error]
    assert tokens.count((Keyword, "if")) == 2 and tokens.count((Keyword, "else")) == 2
    for word in ("or", "not", "and"):
        assert (Operator.Word, word) in tokens
    for op in ("!=", "==", "%", "<=", "**", ">=", ">"):
        assert (Operator, op) in tokens
    assert (Name.Builtin, "max") in tokens and (Name.Builtin, "min") in tokens
    assert (Name.Function, "p") in tokens and (Name.Builtin, "conv") in tokens
