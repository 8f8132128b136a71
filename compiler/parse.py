"""Parse stage: .mach text → :mod:`syntax` tree, with Lark errors turned into diagnostics."""

from __future__ import annotations

import ast
import dataclasses
import functools
import warnings

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.lexer import PatternStr
from machc.grammar import GRAMMAR_PATH

from . import syntax as s
from .diagnostics import Code, CompileError, Diagnostic, Severity, Span
from .expressions import FUNCTIONS, MAX_DIGITS
from .parser_cache import load_parser

# How terminals are named in "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "the end of the file",
}
# Tokens that can start an expression; when these may come next we just say "an expression".
_EXPRESSION_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE"}
_EXPRESSION_START |= {"NOT"}
_EXPRESSION_SIGNS = {"NAME", "INT", "LPAR", "MINUS"}
# After an expression every operator may come next: they are named together.
_OPERATORS = {"+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or"}


@functools.cache
def _parser() -> Lark:
    return load_parser(
        GRAMMAR_PATH, parser="lalr", propagate_positions=True, maybe_placeholders=True
    )


def parse(text: str, path: str) -> s.SourceFile:
    """Parse a whole .mach file; raises :class:`CompileError` with one syntax diagnostic."""
    if text.startswith("\ufeff"):  # a byte-order mark: white space that keeps the columns
        text = " " + text[1:]
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise CompileError([_syntax_diagnostic(exc, text, path)], {path: text}) from None
    too_deep = _too_deep(tree, path)
    if too_deep is not None:
        raise CompileError([too_deep], {path: text})
    try:
        return _ToSyntax(path).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, _BadLiteral):
            diagnostic = Diagnostic(
                severity=Severity.ERROR,
                code=Code.SYNTAX,
                message=exc.orig_exc.message,
                span=exc.orig_exc.span,
            )
            raise CompileError([diagnostic], {path: text}) from None
        raise


MAX_NESTING = 100  # operators, parentheses and lists inside one another, in one expression
MAX_BLOCK_NESTING = 50  # loops and ifs inside one another
_EXPRESSION_RULES = frozenset(
    {"add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "not_", "and_", "or_"}
    | {"compare", "call", "list", "range"}
)
_BLOCK_RULES = frozenset({"for_loop", "if_block"})


def _too_deep(tree, path: str) -> Diagnostic | None:
    """An error for an expression nested deeper than :data:`MAX_NESTING`, or loops and ifs
    nested deeper than :data:`MAX_BLOCK_NESTING`, found without recursion (the transformer
    and the later stages walk the tree recursively)."""
    stack = [(tree, 0, 0)]
    while stack:
        node, depth, blocks = stack.pop()
        if not hasattr(node, "data"):
            continue
        if node.data in _EXPRESSION_RULES:
            depth += 1
            if depth > MAX_NESTING:
                return _nesting_error(
                    node.meta,
                    path,
                    f"this expression is nested more than {MAX_NESTING} levels deep "
                    "(operators, parentheses and lists inside one another)",
                    "compute the value outside and pass it as a parameter",
                )
        if node.data in _BLOCK_RULES:
            blocks += 1
            if blocks > MAX_BLOCK_NESTING:
                return _nesting_error(
                    node.meta,
                    path,
                    f"loops and ifs are nested more than {MAX_BLOCK_NESTING} levels deep",
                    "a machine this deep is surely a mistake; nest fewer blocks",
                )
        stack.extend((child, depth, blocks) for child in node.children)
    return None


def _nesting_error(meta, path: str, message: str, hint: str) -> Diagnostic:
    span = Span(
        file=path,
        line=meta.line,
        column=meta.column,
        end_line=meta.line,
        end_column=meta.column + 1,
    )
    return Diagnostic(
        severity=Severity.ERROR, code=Code.EXPRESSION, message=message, span=span, hint=hint
    )


class _BadLiteral(Exception):
    def __init__(self, message: str, span: Span):
        super().__init__(message)
        self.message = message
        self.span = span


def _describe_expected(names: set[str]) -> str:
    names = set(names)
    words = []
    if _EXPRESSION_SIGNS <= names:
        names -= _EXPRESSION_START
        words.append("an expression")
    for name in sorted(names):
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = _parser().get_terminal(name).pattern
        except KeyError:
            words.append(name)
            continue
        words.append(repr(pattern.value) if isinstance(pattern, PatternStr) else name.lower())
    if "'=='" in words:
        words = [w for w in words if w[1:-1] not in _OPERATORS] + ["an operator"]
    words = sorted(set(words), key=lambda w: (not w.startswith("'"), w))
    if not words:
        return ""
    if len(words) == 1:
        return f"; expected {words[0]}"
    return "; expected one of " + ", ".join(words)


def _syntax_diagnostic(exc: UnexpectedInput, text: str, path: str) -> Diagnostic:
    line, column = exc.line, exc.column
    width = 1
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            found = "end of the file"
            line, column = _end_position(text)
        else:
            found = repr(str(token))
            width = max(1, len(str(token)))
        message = f"unexpected {found}{_describe_expected(exc.expected)}"
    elif isinstance(exc, UnexpectedCharacters):
        message = f"unexpected character {text[exc.pos_in_stream]!r}" + _describe_expected(
            exc.allowed or set()
        )
    elif isinstance(exc, UnexpectedEOF):
        line, column = _end_position(text)
        message = "unexpected end of the file" + _describe_expected(set(exc.expected))
    else:  # pragma: no cover - Lark has no other kinds today
        message = str(exc).splitlines()[0]
    if line is None or line < 1:
        line, column = _end_position(text)
    span = Span(file=path, line=line, column=column, end_line=line, end_column=column + width)
    return Diagnostic(severity=Severity.ERROR, code=Code.SYNTAX, message=message, span=span)


def _end_position(text: str) -> tuple[int, int]:
    """Just after the last character that is not white space."""
    lines = text.rstrip().split("\n")  # as the parser counts lines: by \n alone
    return len(lines), len(lines[-1]) + 1


def _token_span(path: str, token: Token) -> Span:
    return Span(
        file=path,
        line=token.line,
        column=token.column,
        end_line=token.end_line,
        end_column=token.end_column,
    )


def _decode_string(token: str, span: Span) -> str:
    """The value of a STRING token: the grammar admits only double quotes and backslash escapes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return ast.literal_eval(token)
    except (SyntaxError, ValueError, Warning):
        raise _BadLiteral(f"invalid escape in string {token}", span) from None


@v_args(meta=True)
class _ToSyntax(Transformer):
    """Builds :mod:`syntax` nodes; one method per grammar rule (or alias)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _span(self, meta) -> Span:
        return Span(
            file=self.path,
            line=meta.line,
            column=meta.column,
            end_line=meta.end_line,
            end_column=meta.end_column,
        )

    # --- file and machines ---

    def start(self, meta, items):
        imports = tuple(item for item in items if isinstance(item, s.ImportDecl))
        machines = tuple(item for item in items if isinstance(item, s.MachineDecl))
        return s.SourceFile(path=self.path, machines=machines, imports=imports)

    def import_decl(self, meta, children):
        (target,) = children
        if isinstance(target, Token):  # a STRING: a path
            path = _decode_string(str(target), self._span(meta))
            return s.ImportDecl(path=path, module=None, span=self._span(meta))
        return s.ImportDecl(path=None, module=target, span=self._span(meta))

    def dotted_name(self, meta, names):
        return ".".join(str(name) for name in names)

    def machine(self, meta, children):
        name, params, time, *body = children
        return s.MachineDecl(
            name=str(name),
            params=params or (),
            time=time,
            body=tuple(body),
            span=self._span(meta),
            name_span=_token_span(self.path, name),
        )

    def over(self, meta, children):
        return str(children[0])

    def param_list(self, meta, params):
        return tuple(p for p in params if p is not None)

    def param(self, meta, children):
        name, type_, default = children
        return s.ParamDecl(
            name=str(name),
            type=str(type_),
            default=default,
            span=self._span(meta),
            type_span=_token_span(self.path, type_),
        )

    # --- declarations ---

    def role(self, meta, children):
        return str(children[0])

    def space_decl(self, meta, children):
        role, name, array, shape = children  # shape None: left out, to be inferred
        if isinstance(shape, s.Call) and shape.name not in FUNCTIONS and len(shape.args) == 1:
            # `ids(vocab)`: a kind of space with its size (build checks the kind)
            shape = s.SpaceKind(
                kind=shape.name, size=shape.args[0], span=shape.span, kind_span=shape.name_span
            )
        return s.SpaceDecl(
            role=role,
            name=str(name),
            array=array,
            shape=shape,
            span=self._span(meta),
            name_span=_token_span(self.path, name),
        )

    def array_range(self, meta, children):
        return children[0]

    def edge_decl(self, meta, children):
        (name, index, name_span), inputs, _arrow, outputs, ops = children
        return s.EdgeDecl(
            name=name,
            index=index,
            inputs=inputs,
            outputs=outputs,
            ops=ops,
            span=self._span(meta),
            name_span=name_span,
        )

    def edge_name(self, meta, children):
        name, index = children
        return str(name), index, self._span(meta)

    def arrow(self, meta, children):
        return None

    def product(self, meta, factors):
        return tuple(factors)

    def factor(self, meta, children):
        name, index, time = children
        return s.SpaceRef(name=str(name), index=index, time=time, span=self._span(meta))

    def pipeline(self, meta, ops):
        return tuple(ops)

    def op(self, meta, children):
        name, *args = children
        return s.OpCall(
            name=str(name),
            args=tuple(a for a in args if a is not None),
            span=self._span(meta),
            name_span=_token_span(self.path, name),
        )

    def positional_arg(self, meta, children):
        return s.Arg(name=None, value=children[0], span=self._span(meta))

    def keyword_arg(self, meta, children):
        name, value = children
        return s.Arg(name=str(name), value=value, span=self._span(meta))

    def for_loop(self, meta, children):
        var, range_, *body = children
        return s.ForLoop(
            var=str(var),
            range=range_,
            body=tuple(body),
            span=self._span(meta),
            var_span=_token_span(self.path, var),
        )

    def if_block(self, meta, children):
        *pairs, last = children
        branches = [
            dataclasses.replace(block, cond=cond)
            for cond, block in zip(pairs[::2], pairs[1::2], strict=True)
        ]
        if last is not None:
            branches.append(last)
        return s.IfBlock(branches=tuple(branches), span=self._span(meta))

    def block(self, meta, items):
        return s.Branch(cond=None, body=tuple(items), span=self._span(meta))

    def solve_decl(self, meta, children):
        (space, index, space_span), solver = children
        return s.SolveDecl(
            space=space, index=index, solver=solver, span=self._span(meta), space_span=space_span
        )

    def all_steps(self, meta, children):
        return s.AllSteps(span=self._span(meta))

    def range(self, meta, children):
        lo, hi = children
        return s.Range(lo=lo, hi=hi, span=self._span(meta))

    # --- expressions ---

    def _binop(op):  # noqa: N805 - builds methods at class creation
        def method(self, meta, children):
            left, right = children
            return s.BinOp(op=op, left=left, right=right, span=self._span(meta))

        return method

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    floordiv = _binop("//")
    truediv = _binop("/")
    mod = _binop("%")
    pow = _binop("**")
    and_ = _binop("and")
    or_ = _binop("or")

    def neg(self, meta, children):
        return s.Neg(operand=children[0], span=self._span(meta))

    def not_(self, meta, children):
        return s.Not(operand=children[0], span=self._span(meta))

    def compare(self, meta, children):
        return s.Compare(
            operands=tuple(children[::2]), ops=tuple(children[1::2]), span=self._span(meta)
        )

    def comp_op(self, meta, children):
        return str(children[0])

    def call(self, meta, children):
        name, *args = children
        return s.Call(
            name=str(name),
            args=tuple(a for a in args if a is not None),
            span=self._span(meta),
            name_span=_token_span(self.path, name),
        )

    def int(self, meta, children):
        text = str(children[0])
        if len(text) > MAX_DIGITS:
            raise _BadLiteral(f"a number of more than {MAX_DIGITS} digits", self._span(meta))
        return s.Literal(value=int(text), span=self._span(meta))

    def float(self, meta, children):
        return s.Literal(value=float(children[0]), span=self._span(meta))

    def true(self, meta, children):
        return s.Literal(value=True, span=self._span(meta))

    def false(self, meta, children):
        return s.Literal(value=False, span=self._span(meta))

    def string(self, meta, children):
        value = _decode_string(str(children[0]), self._span(meta))
        return s.Literal(value=value, span=self._span(meta))

    def list(self, meta, children):
        items = tuple(item for item in children if item is not None)
        return s.ListExpr(items=items, span=self._span(meta))

    def var(self, meta, children):
        return s.Var(name=str(children[0]), span=self._span(meta))
