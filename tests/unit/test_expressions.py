"""Expressions (``** % == != < <= > >= and or not min max``) and ``if`` blocks, without torch.

The oracle for expressions is Python: the same text evaluated by Python's own
parser and arithmetic gives the same value (precedence, associativity, chains
of comparisons, short-circuits), or fails where .mach reports an error.
"""

from __future__ import annotations

import ast
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from machc.diagnostics import CompileError
from machc.driver import check_source
from machc.expressions import Problem, evaluate
from machc.fmt import format_source
from machc.parse import parse
from test_fmt import assert_formats_safely, tree

ENV = {"n": 3, "k": 0, "r": 0.5, "b": True}
PYTHON = {"__builtins__": {}, "min": min, "max": max, "true": True, "false": False, **ENV}


def value(text: str, env=ENV):
    """The value of an expression written as a parameter default."""
    params = ", ".join(f"{name}: {_type(v)} = {_literal(v)}" for name, v in env.items())
    source = f"machine M({params}) {{ input x : {text} }}"
    shape = parse(source, "x.mach").machines[0].body[0].shape
    return evaluate(shape, env)


def _type(v) -> str:
    return "bool" if isinstance(v, bool) else type(v).__name__


def _literal(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


def errors(text: str) -> list[tuple[str, str, int, int]]:
    """(code, message, line, column) of every error of a source that must fail."""
    with pytest.raises(CompileError) as info:
        check_source(text, "x.mach")
    return [(d.code.value, d.message, d.span.line, d.span.column) for d in info.value.errors]


# --- precedence and associativity, against Python ------------------------------------

# Python's precedence, loosest first; an operand binding less tightly than its place
# allows is parenthesised.
OR, AND, NOT, COMPARE, SUM, TERM, UNARY, POWER, ATOM = range(1, 10)
BINARY = {"or": OR, "and": AND, "+": SUM, "-": SUM, "*": TERM, "/": TERM, "//": TERM, "%": TERM}


def _wrap(draw, node: tuple[str, int], least: int) -> str:
    text, precedence = node
    if precedence < least or draw(st.integers(0, 9)) == 0:  # sometimes parentheses anyway
        return f"({text})"
    return text


@st.composite
def expressions(draw, kind: str, depth: int = 0) -> tuple[str, int]:
    """(text, precedence) of a random expression of ``kind``: "int", "num" or "bool"."""
    leaf = depth >= 4 or draw(st.integers(0, 3)) == 0
    if kind == "bool":
        if leaf:
            return draw(st.sampled_from(["true", "false", "b"])), ATOM
        form = draw(st.sampled_from(["not", "and", "or", "compare", "equal"]))
        if form == "not":
            return "not " + _wrap(draw, draw(expressions("bool", depth + 1)), NOT), NOT
        if form in ("and", "or"):
            left = _wrap(draw, draw(expressions("bool", depth + 1)), BINARY[form])
            right = _wrap(draw, draw(expressions("bool", depth + 1)), BINARY[form] + 1)
            return f"{left} {form} {right}", BINARY[form]
        operand = "bool" if form == "equal" and draw(st.booleans()) else "num"
        ops = ["==", "!="] if operand == "bool" else ["==", "!=", "<", "<=", ">", ">="]
        parts = [_wrap(draw, draw(expressions(operand, depth + 1)), COMPARE + 1)]
        for _ in range(draw(st.integers(1, 3))):  # a chain: a < b <= c
            parts += [draw(st.sampled_from(ops)), _wrap(draw, draw(expressions(operand, 4)), SUM)]
        return " ".join(parts), COMPARE
    if leaf:
        if kind == "int" or draw(st.booleans()):
            return draw(st.sampled_from(["0", "1", "2", "3", "7", "n", "k"])), ATOM
        return draw(st.sampled_from(["0.5", "2.25", "1e-1", "r"])), ATOM
    forms = ["+", "-", "*", "//", "%", "neg", "min", "max"]
    forms += ["/", "**"] if kind == "num" else []
    form = draw(st.sampled_from(forms))
    inner = "int" if form == "//" else kind
    if form == "neg":
        return "-" + _wrap(draw, draw(expressions(kind, depth + 1)), UNARY), UNARY
    if form in ("min", "max"):
        count = draw(st.integers(2, 3))
        args = [draw(expressions(kind, depth + 1))[0] for _ in range(count)]
        return f"{form}({', '.join(args)})", ATOM
    if form == "**":  # small exponents: results stay far below 100 digits
        base = _wrap(draw, draw(expressions("num", depth + 1)), ATOM)
        exponent = draw(st.sampled_from(["0", "1", "2", "3", "-1", "-2", "0.5", "-(1)", "k"]))
        return f"{base} ** {exponent}", POWER
    left = _wrap(draw, draw(expressions(inner, depth + 1)), BINARY[form])
    right = _wrap(draw, draw(expressions(inner, depth + 1)), BINARY[form] + 1)
    return f"{left} {form} {right}", BINARY[form]


class _RealPowers(ast.NodeTransformer):
    """``a ** b`` as ``_pow(a, b)``, after Python has parsed it: a power that Python would
    make complex (``(-0.25) ** 0.5``) fails there, as it fails in .mach."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.op, ast.Pow):
            return node
        return ast.Call(ast.Name("_pow", ast.Load()), [node.left, node.right], [])


def _pow(a, b):
    result = a**b
    if isinstance(result, complex):
        raise ValueError("complex")
    return result


def python_value(text: str):
    tree = ast.fix_missing_locations(_RealPowers().visit(ast.parse(text, mode="eval")))
    try:
        result = eval(compile(tree, "<expr>", "eval"), {**PYTHON, "_pow": _pow})  # noqa: S307
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
        return None
    return result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["int", "num", "bool"]).flatmap(expressions))
def test_expressions_evaluate_as_python_does(expression: tuple[str, int]) -> None:
    text = expression[0]
    expected = python_value(text)
    try:
        got = value(text)
    except Problem as problem:
        assert expected is None, f"{text}: {problem.message}, Python gives {expected!r}"
        assert problem.code.value == "E005"
        return
    assert expected is not None, f"{text}: {got!r}, but Python fails"
    assert got == expected and type(got) is type(expected), (text, got, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-2 ** 2", -4),  # ** binds tighter than a unary minus on its left
        ("2 ** -1", 0.5),  # ... and takes one on its right
        ("2 ** 3 ** 2", 512),  # right-associative
        ("(2 ** 3) ** 2", 64),
        ("-7 % 3", 2),  # modulo has the sign of the divisor, as in Python
        ("7 % -3", -2),
        ("7.5 % 2", 1.5),
        ("2 + 3 * 4 % 5", 4),  # % is at the level of * and //
        ("10 - 4 % 3", 9),
        ("1 + 2 == 3", True),  # comparisons below arithmetic
        ("1 < 2 < 3", True),  # chains
        ("3 > 2 > 2", False),
        ("1 == 1.0", True),
        ("not 1 > 2", True),  # not below comparisons
        ("not true == false", True),
        ("true or true and false", True),  # and above or
        ("(true or true) and false", False),
        ("not true or true", True),  # not above and, or
        ("false and 1 // 0 == 1", False),  # the right side is not evaluated
        ("true or 1 // 0 == 1", True),
        ("3 < 2 < 1 // 0", False),  # nor the rest of a chain
        ("min(3, 1, 2)", 1),
        ("max(1, 2.5)", 2.5),
        ("min(n, 2) ** 2", 4),
        ('"a" != "b"', True),
        ("-n ** 2", -9),
        ("10 ** 99 > 0", True),  # 100 digits: the most an integer has
    ],
)
def test_precedence_examples(text: str, expected) -> None:
    got = value(text)
    assert got == expected and type(got) is type(expected)
    assert got == eval(text, dict(PYTHON))  # noqa: S307


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n % 0", "modulo by zero"),
        ("n % 0.0", "modulo by zero"),
        ("0 ** -1", "zero to a negative power (division by zero)"),
        ("(-8) ** 0.5", "a negative number to a fractional power has no real value"),
        ("10 ** 100", "the result is too large (an integer has at most 100 digits)"),
        ("2 ** 10 ** 9", "the result is too large"),
        ("2 ** 2 ** 2 ** 2 ** 2 ** 2", "the result is too large"),
        ("10 ** 99 * 10", "the result is too large (an integer has at most 100 digits)"),
        ("10.0 ** 400", "the result is too large"),
        ("2 ** 2000.0", "the result is too large"),
        ("true == 1", "'==' compares two numbers, two booleans or two strings, got true and 1"),
        ("[1] != [1]", "'!=' compares two numbers, two booleans or two strings"),
        ("1 < true", "'<' needs numbers, got true"),
        ('"a" < "b"', "'<' needs numbers"),
        ("1 and true", "'and' needs true or false, got 1"),
        ("false or 0", "'or' needs true or false, got 0"),
        ("not 1", "'not' needs true or false, got 1"),
        ("-true", "'-' needs numbers, got true"),
        ("true ** 2", "'**' needs numbers, got true"),
        ("min(1)", "min takes two or more numbers, got 1"),
        ("max()", "max takes two or more numbers, got 0"),
        ("max(1, [2])", "'max' needs numbers, got [2]"),
    ],
)
def test_expression_errors(text: str, message: str) -> None:
    with pytest.raises(Problem) as info:
        value(text)
    assert info.value.code.value == "E005"
    assert info.value.message.startswith(message)


def test_an_unknown_function_is_an_unknown_name() -> None:
    with pytest.raises(Problem) as info:
        value("mn(1, 2)")
    assert (info.value.code.value, info.value.message) == ("E002", "unknown function 'mn'")
    assert info.value.hint == "did you mean 'min'?"
    assert info.value.span.end_column - info.value.span.column == len("mn")


def test_a_comparison_error_points_at_the_pair_it_compares() -> None:
    ((code, message, line, column),) = errors(
        "machine M {\n input x : 4\n output y : 4\n e : x -> y = dropout(p=1 < 2 == true)\n}"
    )
    assert (code, line, column) == ("E005", 4, 29)  # 2 == true
    assert message.endswith("got 2 and true")


def test_ids_is_still_a_kind_of_space_and_not_a_function() -> None:
    tree = parse("machine S over t { input tok : ids(2 * v) }", "x.mach")
    shape = tree.machines[0].body[0].shape
    assert type(shape).__name__ == "SpaceKind" and shape.kind == "ids"
    assert type(parse("machine S { input x : max(2, v) }", "x.mach").machines[0].body[0].shape)
    ((code, message, _, _),) = errors("machine S { input x : ids(2) + 1 output y : 1 }")
    assert (code, message) == ("E002", "unknown function 'ids'")


@pytest.mark.parametrize(
    "text",
    [
        " ** ".join(["1"] * 150),
        "not " * 500 + "true",
        " or ".join(["true"] * 500),
        "min(" * 200 + "1" + ", 1)" * 200,
        "1 < " * 300 + "2",
    ],
    ids=["power", "not", "or", "min", "chain"],
)
def test_deep_expressions_are_an_error_or_fine(text: str) -> None:
    source = f"machine D {{ input x : 4\n output y : 4\n e : x -> y = dropout(p={text}) }}"
    if text.startswith("1 <"):  # a chain is one comparison, however long
        ((code, _, _, _),) = errors(source)
        assert code == "E008"  # dropout's p is a number, not false
        return
    ((code, message, line, _),) = errors(source)
    assert (code, line) == ("E005", 3)
    assert "nested more than 100 levels deep" in message


# --- if ---------------------------------------------------------------------------


def edges(source: str, params=None) -> dict[str, list[str]]:
    """The edges of every machine of a source that compiles."""
    program = check_source(source, "x.mach", params).program
    return {c.machine.key: [e.name for e in c.machine.edges] for c in program.machines}


BLOCK = """
machine Block(cin: int = 8, cout: int = 8, stride: int = 1) {
    input  x : [cin, 16, 16]
    output y : [cout, 16 // stride, 16 // stride]
    body : x -> y = conv(3, stride=stride, padding=1)
    if stride != 1 or cin != cout { proj : x -> y = conv(1, stride=stride) | batchnorm }
    else { skip : x -> y = identity }
}
"""


def test_the_issue_example_takes_each_branch() -> None:
    assert edges(BLOCK)["Block"] == ["body", "skip"]
    assert edges(BLOCK, {"stride": 2})["Block"] == ["body", "proj"]
    assert edges(BLOCK, {"cout": 4})["Block"] == ["body", "proj"]


def test_a_machine_used_twice_as_an_edge_takes_a_branch_per_use() -> None:
    source = (
        BLOCK
        + """
machine Net {
    input  x : [8, 16, 16]
    space  a : [8, 16, 16]
    output y : [16, 8, 8]
    b1 : x -> a = Block()
    b2 : a -> y = Block(cout=16, stride=2)
}
"""
    )
    found = edges(source)
    assert found["Net"] == ["b1", "b2"]
    assert found["Block"] == ["body", "skip"]  # b1: the file's own Block
    assert found["Block_cin8_cout16_stride2"] == ["body", "proj"]


def test_else_if_chains_take_the_first_branch_that_holds() -> None:
    source = """machine M(n: int = 0) {
        input x : 4  output y : 4
        if n < 0 { neg : x -> y = linear }
        else if n == 0 { zero : x -> y = linear }
        else if n < 10 { small : x -> y = linear }
        else { big : x -> y = linear }
    }"""
    taken = {n: edges(source, {"n": n})["M"] for n in (-5, 0, 3, 10, 99)}
    assert taken == {-5: ["neg"], 0: ["zero"], 3: ["small"], 10: ["big"], 99: ["big"]}
    no_else = (
        "machine M(n: int = 0) { input x : 4 output y : 4\n"
        "e : x -> y = linear if n > 0 { f : x -> y = relu } }"
    )
    assert edges(no_else)["M"] == ["e"] and edges(no_else, {"n": 1})["M"] == ["e", "f"]


def test_ifs_in_loops_and_loops_in_ifs_and_nested_ifs() -> None:
    source = """machine M(n: int = 5, odd: bool = true) {
        input x : 4  space h[0..n] : 4  output y : 4
        first : x -> h[0] = linear
        for i in 1..n {
            if i % 2 == 1 and odd {
                if i == 1 { one[i] : h[i-1] -> h[i] = linear }
                else { odd[i] : h[i-1] -> h[i] = linear | relu }
            } else {
                even[i] : h[i-1] -> h[i] = linear | tanh
            }
        }
        if n > 2 {
            for j in 1..2 {
                space s[j..j] : 4  side[j] : h[j] -> s[j] = linear  back[j] : s[j] -> y = linear
            }
        }
        out : h[n] -> y = linear
    }"""
    assert edges(source)["M"] == [
        "first",
        *["one[1]", "even[2]", "odd[3]", "even[4]", "odd[5]"],
        *["side[1]", "back[1]", "side[2]", "back[2]"],
        "out",
    ]
    assert edges(source, {"n": 2, "odd": False})["M"] == ["first", "even[1]", "even[2]", "out"]


def test_a_branch_not_taken_is_not_checked_and_names_may_repeat_across_branches() -> None:
    source = """machine M(wide: bool = false) {
        input x : 4
        if wide { space h : 16  e : x -> h = no_such_op(1 // 0) }
        else { space h : 8  e : x -> h = linear }
        output y : 4
        o : h -> y = linear
    }"""
    program = check_source(source, "x.mach").program
    (checked,) = program.machines
    assert [s.shape for s in checked.machine.spaces if s.name == "h"] == [(8,)]
    ((code, message, line, _),) = errors(source.replace("wide: bool = false", "wide: bool = true"))
    assert (code, line) == ("E007", 3) and message == "unknown op 'no_such_op'"


def test_a_condition_must_be_a_boolean_and_errors_in_loops_name_the_iteration() -> None:
    found = errors(
        "machine M { input x : 4 output y : 4 e : x -> y = linear\n"
        "  for i in 1..3 { if i - 2 { f[i] : x -> y = linear } }\n"
        '  if "yes" { g : x -> y = linear } }'
    )
    assert found == [
        ("E005", "a condition must be true or false, not an integer (with i = 1)", 2, 22),
        ("E005", "a condition must be true or false, not a string", 3, 6),
    ]


def test_ifs_in_loops_that_run_no_time_declare_their_arrays() -> None:
    source = """machine M(n: int = 0) {
        input x : 4  output y : 4
        for i in 1..n { if i > 1 { space h[i..i] : 4 } else { space h[i..i] : 4 } }
        e : x × h[1..n] -> y = linear
    }"""
    assert edges(source)["M"] == ["e"]


def test_keywords_are_not_names() -> None:
    found = errors("machine M(or: int = 1) { input x : 4 output y : 4 e : x -> y = linear }")
    assert found == [("E006", "'or' is a keyword, not a parameter name", 1, 11)]
    found = errors("machine M { input x : 4 output y : 4 for if in 1..2 { } e : x -> y = linear }")
    assert found[0][:2] == (
        "E003",
        "loop variable 'if' is a word of expressions; give it another name",
    )


def test_blocks_nested_too_deep_are_an_error() -> None:
    def source(n: int) -> str:
        body = "e : x -> y = linear"
        for k in range(n):
            body = f"for i{k} in 1..1 {{ {body} }}" if k % 2 else f"if true {{ {body} }}"
        return f"machine M {{ input x : 4 output y : 4 {body} }}"

    check_source(source(50), "x.mach")  # every loop runs once: one edge e
    ((code, message, _, _),) = errors(source(51))
    assert code == "E005" and message == "loops and ifs are nested more than 50 levels deep"
    ((code, _, _, _),) = errors(source(3000))
    assert code == "E005"


# --- fmt ------------------------------------------------------------------------------


def test_fmt_writes_minimal_parentheses_that_keep_the_meaning() -> None:
    text = (
        "machine M(n: int = 3, b: bool = ((not (n < 2)) and (n ** 2 % 3 == 0)) or (not true)) {\n"
        "input x : max((n), min(n, 2)) ** (2) + (-n) ** 2 + -(n ** 2) + 2 ** (-1 ** 2) // 1\n"
        "output y : ((2 ** 3) ** 2) % 7 + (1 < 2 == (3 > 2)) * 0\n"
        "e : x -> y = linear }"
    )
    formatted = assert_formats_safely(text)
    assert "b: bool = not n < 2 and n ** 2 % 3 == 0 or not true" in formatted
    assert "x : max(n, min(n, 2)) ** 2 + (-n) ** 2 + -n ** 2 + 2 ** -1 ** 2 // 1" in formatted
    assert "y : (2 ** 3) ** 2 % 7 + (1 < 2 == (3 > 2)) * 0" in formatted


def test_fmt_lays_out_if_blocks() -> None:
    text = (
        "machine M(n: int = 2) { input x : 4 output y : 4\n"
        "if n>1 and not(n==3) { # big\n a : x -> y = linear } # after the first\n"
        "else if n%2==0 { b : x -> y = linear\n bb : x -> y = relu }\n"
        "else { for i in 1..n { if i<2 { c[i] : x -> y = linear } } } }\n"
    )
    assert assert_formats_safely(text) == (
        "machine M(n: int = 2) {\n"
        "    input  x : 4\n"
        "    output y : 4\n"
        "\n"
        "    if n > 1 and not n == 3 {  # big\n"
        "        a : x -> y = linear\n"
        "    } else if n % 2 == 0 {  # after the first\n"
        "        b  : x -> y = linear\n"
        "        bb : x -> y = relu\n"
        "    } else {\n"
        "        for i in 1..n {\n"
        "            if i < 2 {\n"
        "                c[i] : x -> y = linear\n"
        "            }\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def test_word_operators_keep_their_spaces_inside_indices() -> None:
    text = (
        "machine M { input x : 4 space h[0..1] : 4 output y : 4 e : x -> h[n%2] × h[not(b)] = z }"
    )
    formatted = format_source(text)
    assert "h[n%2] × h[not b]" in formatted
    assert format_source(formatted) == formatted


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["int", "num", "bool"]).flatmap(expressions))
def test_fmt_keeps_the_tree_of_random_expressions(expression: tuple[str, int]) -> None:
    params = "n: int = 1, k: int = 0, r: float = 0.5, b: bool = true"
    text = f"machine M({params}) {{ input x : {expression[0]} }}\n"
    formatted = format_source(text)
    assert tree(formatted) == tree(text)
    assert format_source(formatted) == formatted
    index = f"machine M {{ input x : 4 output y : 4 e : x -> h[{expression[0]}] = linear }}\n"
    formatted = format_source(index)
    assert tree(formatted) == tree(index)
