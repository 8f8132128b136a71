"""``machc fmt``: idempotent, keeps every comment, and never changes what a file means.

"What a file means" is checked twice: the syntax tree with every span left out
must be the same before and after (parentheses and layout are not in the tree),
and so must the checked IR with spans left out (or, for a file with errors, the
list of diagnostic codes and messages). Only positions may move.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from machc.diagnostics import CompileError
from machc.driver import check_source
from machc.fmt import format_source
from machc.parse import _parser, parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))
DIAGNOSTIC_CASES = sorted((ROOT / "tests" / "golden" / "diagnostics").glob("*.mach"))
SPAN_FIELDS = {"span", "name_span", "type_span", "var_span", "kind_span", "space_span"}


def _parses(path: Path) -> bool:
    try:
        parse(path.read_text(encoding="utf-8"), path.name)
    except CompileError:
        return False
    return True


FMT_CASES = sorted((ROOT / "tests" / "golden" / "fmt").glob("*.mach"))
PARSEABLE = [*EXAMPLES, *FMT_CASES, *(case for case in DIAGNOSTIC_CASES if _parses(case))]


def tree(text: str) -> object:
    """The syntax tree as plain tuples, without spans."""

    def strip(node: object) -> object:
        if dataclasses.is_dataclass(node):
            return (
                type(node).__name__,
                *(
                    strip(getattr(node, f.name))
                    for f in dataclasses.fields(node)
                    if f.name not in SPAN_FIELDS and f.name != "path"
                ),
            )
        if isinstance(node, tuple):
            return tuple(strip(item) for item in node)
        if isinstance(node, float):
            return ("float", node)  # so that 1 and 1.0 differ
        return node

    return strip(parse(text, "x.mach"))


def meaning(text: str, name: str = "x.mach") -> object:
    """The checked IR without spans, or the diagnostics without places.

    ``name`` places the text, so that its imports are found.
    """
    try:
        checked = check_source(text, name)
    except CompileError as exc:
        return [(d.severity, d.code, d.message) for d in exc.diagnostics]

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "span"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    warnings = [(d.severity, d.code, d.message) for d in checked.warnings]
    return strip(checked.program.model_dump(mode="json")), warnings


def comments(text: str) -> list[str]:
    return [str(t).rstrip() for t in _parser().lex(text, dont_ignore=True) if t.type == "COMMENT"]


def assert_formats_safely(text: str, name: str = "x.mach") -> str:
    formatted = format_source(text, name)
    assert format_source(formatted, name) == formatted, "not idempotent"
    assert tree(formatted) == tree(text)
    assert meaning(formatted, name) == meaning(text, name)
    assert comments(formatted) == comments(text)
    assert "\n\n\n" not in formatted
    assert formatted == "" or (formatted.endswith("\n") and not formatted.endswith("\n\n"))
    assert all(line == line.rstrip() for line in formatted.splitlines())
    return formatted


@pytest.mark.parametrize("path", PARSEABLE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_parseable_file_formats_safely(path: Path) -> None:
    assert_formats_safely(path.read_text(encoding="utf-8"), str(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_generated_code_is_the_same_but_for_line_numbers(path: Path) -> None:
    from machc.driver import compile_source

    def code(text: str) -> str:
        name = str(path.parent / "x.mach")  # beside the example, so that its imports are found
        return re.sub(r"x\.mach:\d+", "x.mach:LINE", compile_source(text, name))

    text = path.read_text(encoding="utf-8")
    assert code(format_source(text)) == code(text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_house_style_is_the_examples_style(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert format_source(text, str(path)) == text


def test_syntax_errors_are_diagnostics() -> None:
    with pytest.raises(CompileError) as caught:
        format_source("machine M {\n    input x 3\n}\n", "bad.mach")
    assert caught.value.diagnostics[0].span.line == 2


def test_empty_and_comment_only_files() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  \n") == ""
    assert format_source("\n# just a note   \n\n\n# another\n") == "# just a note\n\n# another\n"


def test_alternative_spellings_become_canonical() -> None:
    text = "machine M{input x:4 output y:4 f:x*x→y=linear}"
    assert format_source(text) == (
        "machine M {\n    input  x : 4\n    output y : 4\n\n    f : x × x -> y = linear\n}\n"
    )


def test_expressions_spacing_and_parentheses() -> None:
    text = (
        "machine M(n: int = 3) { input x : [(n*2), (n - (1 - 1)), -(n + 1) * -1]\n"
        "space h[1 .. n+1] : n output y : ((n)) // 2 + 1\n"
        "for i in 1..(n) { g[i] : h[ 1 .. i - 1 ] * x -> h[ i + 1 ] = linear(out = 2*n) }\n"
        "f : h[n + 1] -> y = linear }"
    )
    formatted = assert_formats_safely(text)
    assert "input  x : [n * 2, n - (1 - 1), -(n + 1) * -1]" in formatted
    assert "space  h[1..n+1] : n" in formatted
    assert "output y : n // 2 + 1" in formatted
    assert "g[i] : h[1..i-1] × x -> h[i+1] = linear(out=2 * n)" in formatted
    assert "for i in 1..n {" in formatted


def test_comments_stay_in_place() -> None:
    text = (
        "# top\n\n\n"
        "machine M { # header\n"
        "  input x : 4 # trailing\n"
        "  # before y\n"
        "  output y : 4\n"
        "  f : x -> y =   # after the equals sign\n"
        "      linear  # second\n"
        "  # before the brace\n"
        "}  # after the brace\n"
        "# the end\n"
    )
    formatted = assert_formats_safely(text)
    assert formatted == (
        "# top\n\n"
        "machine M {  # header\n"
        "    input  x : 4  # trailing\n"
        "    # before y\n"
        "    output y : 4\n\n"
        "    # after the equals sign\n"
        "    f : x -> y = linear  # second\n"
        "    # before the brace\n"
        "}  # after the brace\n"
        "# the end\n"
    )


def test_pipeline_continuation_lines_are_kept_under_the_equals_sign() -> None:
    text = (
        "machine M { input x : 4 output y : 4\n"
        "  body : x -> y = linear | relu\n"
        "  | linear  # more\n"
        "  f : x -> y = linear\n"
        "  long_name : x -> y = linear }\n"
    )
    formatted = assert_formats_safely(text)
    assert (
        "    body : x -> y = linear | relu\n"
        "                  | linear  # more\n"
        "    f    : x -> y = linear\n"
        "    long_name : x -> y = linear\n"
    ) in formatted


def test_equals_alignment_never_pushes_a_line_past_100_columns() -> None:
    long_op = "linear(out=" + " + ".join(["1"] * 30) + ")"
    text = (
        "machine M { input x : 4 space a : 4 output y : 4\n"
        f"f : x -> a = {long_op}\n"
        "g : x × a × a × a × a × a -> y = linear }\n"
    )
    formatted = assert_formats_safely(text)
    assert f"    f : x -> a = {long_op}" in formatted
    assert "    g : x × a × a × a × a × a -> y = linear" in formatted


def test_sequence_constructs_are_written_tight_and_canonically() -> None:
    text = (
        "machine S(v: int = 16, d: int = 4, w: int = 2, ctx: int = 8) over t {\n"
        "input tok : ids( v*2 ) input x : d space h : d space q:d space k:d space g:d\n"
        "output y : d\n"
        "e : tok -> h = embedding   p : t -> h = embedding(ctx)\n"
        "f : x * g[ t - 1 ] * h[t + (1)] -> g = linear\n"
        "a : q * k[ 0 .. t ] * k[0..t] -> y = attention(heads = 2)\n"
        "b : q × k[t - (w) .. t] × k[t-w..t] -> y = attention(heads=2)\n"
        "c : q × k[ .. ] × k[..] -> y = attention(heads=2)\n"
        "o : h -> q*k = linear }\n"
    )
    assert assert_formats_safely(text) == (
        "machine S(v: int = 16, d: int = 4, w: int = 2, ctx: int = 8) over t {\n"
        "    input  tok : ids(v * 2)\n"
        "    input  x   : d\n"
        "    space  h   : d\n"
        "    space  q   : d\n"
        "    space  k   : d\n"
        "    space  g   : d\n"
        "    output y   : d\n"
        "\n"
        "    e : tok -> h                       = embedding\n"
        "    p : t   -> h                       = embedding(ctx)\n"
        "    f : x × g[t-1] × h[t+1]   -> g     = linear\n"
        "    a : q × k[0..t] × k[0..t] -> y     = attention(heads=2)\n"
        "    b : q × k[t-w..t] × k[t-w..t] -> y = attention(heads=2)\n"
        "    c : q × k[..] × k[..] -> y         = attention(heads=2)\n"
        "    o : h -> q × k                     = linear\n"
        "}\n"
    )


def test_a_window_of_an_array_element_keeps_both_brackets() -> None:
    text = "machine A(n: int = 2) over t { space h[1..n] : 4 f : h[ n ][ 0 .. t ] -> y = x }\n"
    formatted = format_source(text)
    assert "f : h[n][0..t] -> y = x" in formatted
    assert format_source(formatted) == formatted
    assert tree(formatted) == tree(text)


# --- random machines, random layout ------------------------------------------------

SEPARATORS = [
    " ",
    " ",
    " ",
    "  ",
    "\n",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t",
    "\n  ",
    " # note\n",
    "\n# own\n\n",
]
ACTIVATIONS = [
    "relu",
    "tanh",
    "gelu",
    "sigmoid",
    "layernorm",
    "dropout(0.25)",
    "linear(bias=false)",
]


@st.composite
def sizes(draw, names: dict[str, int], depth: int = 0) -> tuple[list[str], int]:
    """Tokens of an integer expression and its value."""
    kind = draw(st.sampled_from(["int", "name", "op", "neg", "paren"] if depth < 3 else ["int"]))
    if kind == "int" or (kind == "name" and not names):
        value = draw(st.integers(1, 6))
        return [str(value)], value
    if kind == "name":
        name = draw(st.sampled_from(sorted(names)))
        return [name], names[name]
    if kind == "paren":
        tokens, value = draw(sizes(names, depth + 1))
        return ["(", *tokens, ")"], value
    if kind == "neg":
        tokens, value = draw(sizes(names, depth + 1))
        return ["-", "(", *tokens, ")"], -value
    op = draw(st.sampled_from(["+", "-", "*", "//"]))
    left, a = draw(sizes(names, depth + 1))
    right, b = draw(sizes(names, depth + 1))
    if op == "//":
        right, b = [str(abs(b) or 1)], abs(b) or 1
    value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
    return ["(", *left, ")", op, "(", *right, ")"], value


@st.composite
def positive_size(draw, names: dict[str, int]) -> list[str]:
    tokens, value = draw(sizes(names))
    if 1 <= value <= 64:
        return tokens
    return ["(", *tokens, ")", "*", "0", "+", str(draw(st.integers(1, 8)))]


@st.composite
def machine_tokens(draw, index: int) -> list[str]:
    params = {"w": draw(st.integers(1, 5))}
    tokens = ["machine", f"M{index}", "(", "w", ":", "int", "=", str(params["w"])]
    loop = draw(st.booleans())
    if loop:
        params["n"] = draw(st.integers(1, 3))
        tokens += [",", "n", ":", "int", "=", str(params["n"])]
    tokens += [",", ")"] if draw(st.booleans()) else [")"]
    tokens += ["{"]
    hidden = [f"a{k}" for k in range(draw(st.integers(0, 3)))]
    spaces = [("input", "x"), *(("space", h) for h in hidden), ("output", "y")]
    body: list[list[str]] = []
    for role, name in spaces:
        size = draw(positive_size(params))
        if draw(st.booleans()):
            size = ["[", *size, "]"]
        body.append([role, name, ":", *size])
    if loop:
        body.append(["space", "h", "[", "1", "..", "n", "]", ":", *draw(positive_size(params))])
    product = draw(st.sampled_from(["×", "*"]))
    arrow = draw(st.sampled_from(["->", "→"]))

    def pipeline() -> list[str]:
        ops = ["linear", *draw(st.lists(st.sampled_from(ACTIVATIONS), max_size=8))]
        out = []
        for op in ops:
            out += [*([] if not out else ["|"]), op]
        return out

    readable = ["x"]
    edges: list[list[str]] = []
    for k, name in enumerate(hidden):
        inputs = draw(st.lists(st.sampled_from(readable), min_size=1, max_size=3))
        factors = [t for i, n in enumerate(inputs) for t in ([product] if i else []) + [n]]
        edges.append([f"e{k}", ":", *factors, arrow, name, "=", *pipeline()])
        readable.append(name)
    if loop:
        edge = (
            ["g", "[", "i", "]", ":", "x", product]
            + ["h", "[", "1", "..", "i", "-", "1", "]", arrow, "h", "[", "i", "]", "="]
            + pipeline()
        )
        if draw(st.booleans()):  # the same edge in every branch of an if
            cond = draw(st.sampled_from(CONDITIONS))
            edge = ["if", *cond, "{", *edge, "}", "else", "{", *edge, "}"]
        edges.append(["for", "i", "in", "1", "..", "n", "{", *edge, "}"])
        readable.append("h[n]")
    inputs = [readable[-1], *draw(st.lists(st.sampled_from(readable), max_size=2))]
    factors = [t for i, n in enumerate(inputs) for t in ([product] if i else []) + [n]]
    factors = [t for factor in factors for t in _split_index(factor)]
    edges.append(["out", ":", *factors, arrow, "y", "=", *pipeline()])
    order = draw(st.permutations(range(len(body))))
    items = [body[i] for i in order] + edges
    return tokens + [t for item in items for t in item] + ["}"]


CONDITIONS = [
    ["i", "%", "2", "==", "0"],
    ["i", "<", "2", "or", "not", "(", "w", ">", "1", ")"],
    ["(", "i", "**", "2", ">=", "w", ")", "and", "true"],
    ["min", "(", "i", ",", "w", ")", "!=", "1"],
]


def _split_index(factor: str) -> list[str]:
    return ["h", "[", "n", "]"] if factor == "h[n]" else [factor]


WINDOWS = [
    ["0", "..", "t"],
    ["t", "-", "2", "..", "t"],
    ["t", "-", "(", "w", ")", "..", "t"],
    [".."],
]
OTHER_STEPS = [  # reads of other steps that make no cycle through both directions of time
    ["x", "[", "t", "-", "1", "]"],
    ["x", "[", "t", "+", "2", "]"],
    ["x", "[", "t", "-", "w", "]"],
]


@st.composite
def sequence_machine_tokens(draw, index: int) -> list[str]:
    """A machine over t: ids, positions, reads of other steps, attention through windows."""
    w = draw(st.integers(1, 3))
    tokens = ["machine", f"S{index}", "(", "w", ":", "int", "=", str(w), ",", "d", ":", "int"]
    tokens += ["=", "4", ")", "over", "t", "{"]
    product = draw(st.sampled_from(["×", "*"]))
    body = [["input", "x", ":", "d"], ["space", "e", ":", "d"], ["space", "k", ":", "d"]]
    body.append(["output", "y", ":", *draw(positive_size({"w": w}))])
    edges = []
    if draw(st.booleans()):
        body.append(["input", "tok", ":", "ids", "(", *draw(positive_size({"w": w})), ")"])
        edges.append(["emb", ":", "tok", "->", "e", "=", "embedding"])
    if draw(st.booleans()):
        edges.append(["pos", ":", "t", "->", "e", "=", "embedding", "(", "w", "+", "8", ")"])
    reads = [["x"], *draw(st.lists(st.sampled_from(OTHER_STEPS), max_size=2))]
    if draw(st.booleans()):
        reads.append(["e", "[", "t", "-", "1", "]"])
    factors = [t for i, read in enumerate(reads) for t in ([product] if i else []) + read]
    edges.append(["f", ":", *factors, "->", "e", "=", "linear", "|", "tanh"])
    edges.append(["g", ":", "e", "->", "k", "=", "linear"])
    window = draw(st.sampled_from(WINDOWS))
    edges.append(
        ["a", ":", "e", product, "k", "[", *window, "]", product, "k", "[", *window, "]"]
        + ["->", "y", "=", "attention", "(", "heads", "=", "2", ")", "|", "linear"]
    )
    order = draw(st.permutations(range(len(body))))
    items = [body[i] for i in order] + edges
    return tokens + [t for item in items for t in item] + ["}"]


@st.composite
def sources(draw, machines=machine_tokens) -> str:
    tokens = [t for k in range(draw(st.integers(1, 2))) for t in draw(machines(k))]
    gaps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    head = draw(st.sampled_from(["", "# a header\n", "\n\n# header\n\n"]))
    tail = draw(st.sampled_from(["", "\n", "\n# footer\n", " # end"]))
    return head + "".join(t + gap for t, gap in zip(tokens, gaps, strict=True)) + tail


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources())
def test_random_machines_format_safely(text: str) -> None:
    assert_formats_safely(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources(sequence_machine_tokens))
def test_random_sequence_machines_format_safely(text: str) -> None:
    assert_formats_safely(text)


def test_an_edge_much_longer_than_the_others_keeps_its_equals_sign() -> None:
    # gpt.mach's block: lining the `=` up with attn's would push every other edge's
    # ops twelve columns right; a head up to ten characters longer still lines up, and
    # so do long heads that are not a few (test_sequence_constructs_...)
    text = (
        "machine M over t {\n"
        "    input  x : 4\n"
        "    space  q : 4\n"
        "    space  k : 4\n"
        "    output u : 4\n\n"
        "    proj : x -> q × k = linear\n"
        "    attn : q × k[0..t] × k[0..t] -> u = attention(heads=1)\n"
        "    skip : x -> u = identity\n"
        "}\n"
    )
    assert format_source(text).splitlines()[6:9] == [
        "    proj : x -> q × k = linear",
        "    attn : q × k[0..t] × k[0..t] -> u = attention(heads=1)",
        "    skip : x -> u     = identity",
    ]
    closer = text.replace("q × k[0..t] × k[0..t]", "q × k[0..t]")
    assert format_source(closer).splitlines()[6:9] == [
        "    proj : x -> q × k       = linear",
        "    attn : q × k[0..t] -> u = attention(heads=1)",
        "    skip : x -> u           = identity",
    ]
