"""The formatter behind ``machc fmt``: a .mach source printed in the canonical layout.

The text is parsed into the :mod:`syntax` tree and printed back from it; the
comments, which the grammar discards, are read from the token stream and put
back by position. The canonical layout (documented in docs/cli.md):

- four spaces of indentation per machine, loop or ``if`` body; one item per line;
  ``} else if c {`` and ``} else {`` on lines of their own;
- the role keyword padded to six columns, so that names start in one column;
- the ``:`` after names lined up across a run of declarations of one kind
  (spaces, or edges), blank lines and comments included, except where a name
  is more than three characters longer or shorter than the others (a run of
  short names then does not line up with ``h[1..depth]``);
- within a paragraph of edges (no blank line between them, names lined up),
  the ``->`` lined up the same way and the ``=`` lined up, except on a line
  that this would take past 100 columns, and on the few lines (at most a quarter
  of the paragraph, or one) whose inputs and outputs are longer than all the
  others' by more than ten characters: lining up would stretch the rest to them;
- ``×`` between factors and ``->`` between inputs and outputs;
- reads of other steps and windows written tight, as indices are: ``h[t-1]``,
  ``h[t+1]``, ``k[0..t]``, ``k[t-w..t]``, ``k[..]``; a kind of space as a call:
  ``ids(vocab)``;
- expressions with a space around binary operators (``2 * c``), except in
  indices and ranges (``h[1..i-1]``, ``for i in 2..n+1``), where only ``and``
  and ``or`` keep theirs; minimal parentheses;
- pipeline lines broken where the user broke them, and before an op that would
  end past column 100, each continuation starting with ``|`` under the ``=``;
- one blank line between the space declarations and what follows them and
  between machines, the user's other blank lines kept, never two in a row;
- a comment on its own line stays before the item that follows it; a comment
  after code stays at the end of that code's line.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from lark import Token

from . import syntax as s
from .parse import _parser, parse

INDENT = "    "
MAX_WIDTH = 100  # lines that `=` alignment may not push past
SLACK = 3  # names within this many characters of each other line up
GAP = 10  # an edge's head this much longer than the next shorter one does not set the `=`
ROLE_WIDTH = len("output")

Pos = tuple[int, int]  # (line, column), both from 1


def format_source(text: str, path: str = "<string>") -> str:
    """The canonical layout of a .mach source; raises :class:`CompileError` on a syntax error."""
    tree = parse(text, path)
    tokens = [t for t in _parser().lex(text, dont_ignore=True) if t.type != "WS"]
    return _Printer(text, tokens).file(tree)


# --- expressions ---------------------------------------------------------------

# Python's precedence, loosest first: or, and, not, comparisons, + -, * / // %, unary -, **.
_PRECEDENCE = {"or": 1, "and": 2, "+": 5, "-": 5, "*": 6, "//": 6, "/": 6, "%": 6, "**": 8}
_NOT, _COMPARE, _UNARY, _ATOM = 3, 4, 7, 9
_WORDS = frozenset({"and", "or"})  # operators spaced even where expressions are tight


def _precedence(expr: s.Expr) -> int:
    if isinstance(expr, s.BinOp):
        return _PRECEDENCE[expr.op]
    return {s.Neg: _UNARY, s.Not: _NOT, s.Compare: _COMPARE}.get(type(expr), _ATOM)


class _Expressions:
    """Prints expressions; literals keep their source spelling (``0.10``, ``1e-3``)."""

    def __init__(self, text: str):
        self.lines = text.split("\n")

    def source(self, span) -> str:
        if span.line != span.end_line:  # pragma: no cover - literals are one token
            raise ValueError("a literal spans lines")
        return self.lines[span.line - 1][span.column - 1 : span.end_column - 1]

    def expr(self, expr: s.Expr, tight: bool = False) -> str:
        if isinstance(expr, s.Literal):
            if isinstance(expr.value, bool):
                return "true" if expr.value else "false"
            return self.source(expr.span)
        if isinstance(expr, s.Var):
            return expr.name
        if isinstance(expr, s.ListExpr):
            return "[" + ", ".join(self.expr(item, tight) for item in expr.items) + "]"
        if isinstance(expr, s.Call):
            return f"{expr.name}(" + ", ".join(self.expr(a, tight) for a in expr.args) + ")"
        if isinstance(expr, s.Neg):
            return "-" + self._operand(expr.operand, _UNARY, tight)
        if isinstance(expr, s.Not):
            return "not " + self._operand(expr.operand, _NOT, tight)
        if isinstance(expr, s.Compare):
            # an operand that is itself a comparison would join the chain
            texts = [self._operand(item, _COMPARE + 1, tight) for item in expr.operands]
            return texts[0] + "".join(
                self._infix(op, tight) + text for op, text in zip(expr.ops, texts[1:], strict=True)
            )
        precedence = _PRECEDENCE[expr.op]
        if expr.op == "**":  # right-associative; its right side may be a unary minus: 2 ** -1
            left = self._operand(expr.left, _ATOM, tight)
            right = self._operand(expr.right, _UNARY, tight)
        else:  # NOTE: left-associative, so `a - (b - c)` keeps its parentheses
            left = self._operand(expr.left, precedence, tight)
            right = self._operand(expr.right, precedence + 1, tight)
        return left + self._infix(expr.op, tight) + right

    def _operand(self, expr: s.Expr, least: int, tight: bool) -> str:
        """``expr`` in parentheses unless it binds at least as tightly as ``least``."""
        text = self.expr(expr, tight)
        return f"({text})" if _precedence(expr) < least else text

    @staticmethod
    def _infix(op: str, tight: bool) -> str:
        return op if tight and op not in _WORDS else f" {op} "

    def range(self, range_: s.Range) -> str:
        return f"{self.expr(range_.lo, True)}..{self.expr(range_.hi, True)}"

    def index(self, index: s.Expr | s.Range | s.AllSteps) -> str:
        if isinstance(index, s.AllSteps):
            return ".."
        return self.range(index) if isinstance(index, s.Range) else self.expr(index, True)

    def ref(self, ref: s.SpaceRef) -> str:
        """``h``, ``h[i]``, ``h[1..n][t-1]``, ``h[t+1]``, ``k[0..t]``, ``k[t-w..t]``, ``k[..]``."""
        text = ref.name if ref.index is None else f"{ref.name}[{self.index(ref.index)}]"
        return text if ref.time is None else f"{text}[{self.index(ref.time)}]"

    def shape(self, shape: s.Expr | s.SpaceKind) -> str:
        """A space's shape: ``16``, ``[3, h, w]``, or a kind of space: ``ids(vocab)``."""
        if isinstance(shape, s.SpaceKind):
            return f"{shape.kind}({self.expr(shape.size)})"
        return self.expr(shape)

    def op(self, op: s.OpCall) -> str:
        if not op.args:
            return op.name
        args = [
            self.expr(a.value) if a.name is None else f"{a.name}={self.expr(a.value)}"
            for a in op.args
        ]
        return f"{op.name}({', '.join(args)})"

    def param(self, param: s.ParamDecl) -> str:
        text = f"{param.name}: {param.type}"
        return text if param.default is None else f"{text} = {self.expr(param.default)}"


# --- layout --------------------------------------------------------------------


@dataclass
class _Comment:
    text: str
    blank_before: bool = False


@dataclass
class _Group:
    """What prints as one unit: an item, a machine or loop header, or a closing brace."""

    kind: str  # "space", "edge", "solve", "machine", "loop", "if", "else", "close", "import"
    node: object
    depth: int
    start: Pos  # where its first token starts
    blank_before: bool = False  # a blank line before its first token in the source
    forced: bool = False  # a blank line before it (and its comments) whatever the source
    comments: list[_Comment] = field(default_factory=list)  # own-line comments before it
    # Comments inside or after it, in source order: (the token before it, text) for one
    # after code on its line, (None, text) for one on its own line.
    inner: list[tuple[Pos | None, str]] = field(default_factory=list)
    last: Pos = (0, 0)  # where its last token starts
    lines: list[str] = field(default_factory=list)
    line_starts: list[Pos] = field(default_factory=list)  # source position of each line


def _start(span) -> Pos:
    return (span.line, span.column)


def _token_start(token: Token) -> Pos:
    return (token.line, token.column)


def _sections(widths: list[int]) -> list[int]:
    """The width each entry is padded to: runs of similar widths line up."""
    targets: list[int] = []
    i = 0
    while i < len(widths):
        j, low, high = i + 1, widths[i], widths[i]
        while j < len(widths) and max(high, widths[j]) - min(low, widths[j]) <= SLACK:
            low, high = min(low, widths[j]), max(high, widths[j])
            j += 1
        targets += [high] * (j - i)
        i = j
    return targets


def _column(widths: list[int]) -> int:
    """Where the `=` of a paragraph of edges goes, given the widths of their heads:
    after the widest head, unless a few heads (at most a quarter of them, or the one)
    are wider than all the others by more than :data:`GAP`; those keep their `=` where
    they end, and the rest line up after the widest of the rest."""
    ordered = sorted(widths)
    few = max(1, len(ordered) // 4)
    for k in range(len(ordered) - 1, len(ordered) - 1 - few, -1):
        if k > 0 and ordered[k] - ordered[k - 1] > GAP:
            return ordered[k - 1]
    return ordered[-1]


class _Printer:
    def __init__(self, text: str, tokens: list[Token]):
        self.exprs = _Expressions(text)
        self.tokens = tokens
        self.code = [t for t in tokens if t.type != "COMMENT"]
        self.groups: list[_Group] = []
        self.footer: list[_Comment] = []

    # --- phase 1: the groups, in source order ---

    def file(self, tree: s.SourceFile) -> str:
        blocks: list[list[_Group]] = []
        top: list[_Group] = []
        items = sorted((*tree.imports, *tree.machines), key=lambda item: _start(item.span))
        for machine in items:
            if isinstance(machine, s.ImportDecl):
                group = self._add("import", machine, 0, _start(machine.span))
                target = machine.module or json.dumps(machine.path, ensure_ascii=False)
                group.lines, group.line_starts = [f"import {target}"], [group.start]
                top.append(group)
                continue
            header = self._add("machine", machine, 0, _start(machine.span))
            top.append(header)
            body = self._items(machine.body, 1, blocks)
            blocks.append(body)
            close = self._add(
                "close", machine, 0, (machine.span.end_line, machine.span.end_column - 1)
            )
            header.node = (machine, body, close)
        self._place_comments()
        for previous, group in zip(top, top[1:], strict=False):
            # a blank line between machines, and between the imports and a machine
            group.forced = group.kind == "machine" or previous.kind == "machine"
        for body in blocks:
            self._layout_block(body)
        for group in self.groups:
            if group.kind == "machine":
                group.lines = [self._machine_header(group.node[0])]
                group.line_starts = [group.start]
            elif group.kind == "close":
                group.lines, group.line_starts = ["}"], [group.start]
            elif group.kind == "else":
                cond = group.node.cond
                line = "} else {" if cond is None else f"}} else if {self.exprs.expr(cond)} {{"
                group.lines, group.line_starts = [line], [group.start]
        return self._render()

    def _add(self, kind: str, node, depth: int, start: Pos) -> _Group:
        group = _Group(kind, node, depth, start)
        self.groups.append(group)
        return group

    def _items(self, items, depth: int, blocks: list) -> list[_Group]:
        body = []
        for item in items:
            if isinstance(item, s.ForLoop):
                header = self._add("loop", item, depth, _start(item.span))
                inner = self._items(item.body, depth + 1, blocks)
                blocks.append(inner)
                close = self._add("close", item, depth, _closing_brace(item.span))
                header.node = (item, inner, close)
                body.append(header)
            elif isinstance(item, s.IfBlock):
                # `if c {`, then `} else if d {` and `} else {` lines (each starting at the
                # brace that closes the branch before it), then the last `}`
                body.append(self._add("if", item, depth, _start(item.span)))
                for k, branch in enumerate(item.branches):
                    if k:
                        before = item.branches[k - 1].span
                        self._add("else", branch, depth, _closing_brace(before))
                    blocks.append(self._items(branch.body, depth + 1, blocks))
                self._add("close", item, depth, _closing_brace(item.branches[-1].span))
            else:
                kind = {s.SpaceDecl: "space", s.SolveDecl: "solve"}.get(type(item), "edge")
                body.append(self._add(kind, item, depth, _start(item.span)))
        return body

    # --- phase 2: comments and blank lines ---

    def _place_comments(self) -> None:
        starts = [g.start for g in self.groups]
        previous_end: Pos | None = None  # end of the previous token of any kind
        code_index = 0
        group_index = 0
        for token in self.tokens:
            if token.type != "COMMENT":
                position = _token_start(token)
                while group_index < len(self.groups) and self.groups[group_index].start <= position:
                    group = self.groups[group_index]
                    if group.start == position:
                        group.blank_before = _blank(previous_end, token)
                    group_index += 1
                self.groups[group_index - 1].last = position
                code_index += 1
                previous_end = (token.end_line, token.end_column)
                continue
            text = str(token).rstrip()
            before = self.code[code_index - 1] if code_index > 0 else None
            after = self.code[code_index] if code_index < len(self.code) else None
            if before is not None and before.end_line == token.line:
                owner = self.groups[bisect.bisect_right(starts, _token_start(before)) - 1]
                owner.inner.append((_token_start(before), text))
            elif after is None:
                self.footer.append(_Comment(text, _blank(previous_end, token)))
            else:
                owner = self.groups[bisect.bisect_right(starts, _token_start(after)) - 1]
                if owner.start == _token_start(after):
                    owner.comments.append(_Comment(text, _blank(previous_end, token)))
                else:
                    owner.inner.append((None, text))
            previous_end = (token.end_line, token.end_column)

    # --- phase 3: text, with alignment inside each block ---

    def _layout_block(self, body: list[_Group]) -> None:
        for previous, group in zip(body, body[1:], strict=False):
            if (previous.kind == "space") != (group.kind == "space"):
                group.forced = True  # a blank line between the spaces and the rest
            elif group.kind == "solve" and previous.kind != "solve":
                group.forced = True  # and before the solves
        for run in _runs(body, lambda a, b: a.kind == b.kind):
            if run[0].kind == "space":
                self._spaces(run)
            elif run[0].kind == "edge":
                names = _sections([len(self._edge_name(g.node)) for g in run])
                paragraph: list[tuple[_Group, int]] = []
                for group, width in zip(run, names, strict=True):
                    # NOTE: names that do not line up end the paragraph too, or the `=`
                    # alignment would open a gap after the shorter name's edge.
                    if paragraph and (_starts_paragraph(group) or width != paragraph[-1][1]):
                        self._edges(paragraph)
                        paragraph = []
                    paragraph.append((group, width))
                self._edges(paragraph)
            elif run[0].kind == "solve":
                for group in run:
                    solve = group.node
                    name = self._edge_name(solve)
                    group.lines = [f"solve {name} with {self.exprs.op(solve.solver)}"]
                    group.line_starts = [group.start]
            elif run[0].kind == "if":
                for group in run:
                    group.lines = [f"if {self.exprs.expr(group.node.branches[0].cond)} {{"]
                    group.line_starts = [group.start]
            else:
                for group in run:
                    loop = group.node[0]
                    group.lines = [f"for {loop.var} in {self.exprs.range(loop.range)} {{"]
                    group.line_starts = [group.start]

    def _spaces(self, run: list[_Group]) -> None:
        # the shapes line up; a shape left out stays out (check infers it)
        shaped = [g for g in run if g.node.shape is not None]
        names = [self._space_name(g.node) for g in shaped]
        widths = dict(zip(map(id, shaped), _sections([len(n) for n in names]), strict=True))
        for group in run:
            decl = group.node
            name = self._space_name(decl)
            if decl.shape is None:
                group.lines = [f"{decl.role.ljust(ROLE_WIDTH)} {name}"]
            else:
                shape = self.exprs.shape(decl.shape)
                width = widths[id(group)]
                group.lines = [f"{decl.role.ljust(ROLE_WIDTH)} {name.ljust(width)} : {shape}"]
            group.line_starts = [group.start]

    def _space_name(self, decl: s.SpaceDecl) -> str:
        if decl.array is None:
            return decl.name
        return f"{decl.name}[{self.exprs.range(decl.array)}]"

    def _edge_name(self, edge: s.EdgeDecl | s.SolveDecl) -> str:
        name = edge.name if isinstance(edge, s.EdgeDecl) else edge.space
        if edge.index is None:
            return name
        return f"{name}[{self.exprs.expr(edge.index, True)}]"

    def _edges(self, paragraph: list[tuple[_Group, int]]) -> None:
        edges = [group.node for group, _ in paragraph]
        inputs = [" × ".join(self.exprs.ref(r) for r in e.inputs) for e in edges]
        outputs = [" × ".join(self.exprs.ref(r) for r in e.outputs) for e in edges]
        arrows = _sections([len(text) for text in inputs])
        heads = []
        for (_, width), edge, ins, outs, arrow in zip(
            paragraph, edges, inputs, outputs, arrows, strict=True
        ):
            heads.append(f"{self._edge_name(edge).ljust(width)} : {ins.ljust(arrow)} -> {outs}")
        column = _column([len(head) for head in heads])
        for (group, _), edge, head in zip(paragraph, edges, heads, strict=True):
            indent = len(INDENT) * group.depth
            padded = head.ljust(column)
            # NOTE: judged on the first op alone, which wrapping never moves, so that a
            # second run makes the same choice.
            if indent + len(padded) + 3 + len(self.exprs.op(edge.ops[0])) > MAX_WIDTH:
                padded = head
            group.lines, group.line_starts = [], []
            for k, segment in enumerate(_segments(edge.ops)):
                prefix = f"{padded} = " if k == 0 else " " * (len(padded) + 1) + "| "
                for ops in self._wrap(segment, indent + len(prefix)):
                    if group.lines:
                        prefix = " " * (len(padded) + 1) + "| "
                    group.lines.append(prefix + " | ".join(self.exprs.op(op) for op in ops))
                    group.line_starts.append(
                        group.start if not group.line_starts else _start(ops[0].span)
                    )

    def _wrap(self, ops: list[s.OpCall], start: int) -> list[list[s.OpCall]]:
        """Ops in lines that end by column 100, where the ops allow: the first fills the most."""
        lines = [[ops[0]]]
        width = start + len(self.exprs.op(ops[0]))
        for op in ops[1:]:
            text = self.exprs.op(op)
            if width + 3 + len(text) > MAX_WIDTH:
                lines.append([op])
                width = start + len(text)  # continuation prefixes are no wider than the first
            else:
                lines[-1].append(op)
                width += 3 + len(text)
        return lines

    def _machine_header(self, machine: s.MachineDecl) -> str:
        params = ", ".join(self.exprs.param(p) for p in machine.params)
        over = f" over {machine.time}" if machine.time else ""
        return f"machine {machine.name}" + (f"({params})" if params else "") + over + " {"

    # --- phase 4: the text ---

    def _render(self) -> str:
        out: list[str] = []
        after_open = True  # nothing, or a line that opens a block, was printed last

        def emit(depth: int, text: str, blank: bool) -> None:
            nonlocal after_open
            if blank and not after_open:
                out.append("")
            out.append(INDENT * depth + text)
            after_open = False

        for group in self.groups:
            trailing = self._trailing(group)
            closing = group.kind in ("close", "else")  # its comments are inside the block
            comment_depth = group.depth + 1 if closing else group.depth
            for i, comment in enumerate(group.comments):
                emit(comment_depth, comment.text, comment.blank_before or (i == 0 and group.forced))
            if closing:
                blank = False
            elif group.comments:
                blank = group.blank_before
            else:
                blank = group.blank_before or group.forced
            for i, line in enumerate(group.lines):
                text = line + (f"  {trailing[i]}" if i in trailing else "")
                emit(group.depth, text, blank and i == 0)
            after_open = group.kind in ("machine", "loop", "if", "else")
        for comment in self.footer:
            emit(0, comment.text, comment.blank_before)
        return "\n".join(out) + "\n" if out else ""

    def _trailing(self, group: _Group) -> dict[int, str]:
        """The comments at the end of the group's lines, by line.

        A comment inside the group goes at the end of the line that holds the code before
        it; where that cannot be (a comment on its own line inside an item, or two comments
        on code that now makes one line), every comment inside the group moves above it,
        in their order, and only one after its last token stays at the end of its line.
        """
        by_line: dict[int, list[str]] = {}
        for position, text in group.inner:
            if position is not None:
                line = max(bisect.bisect_right(group.line_starts, position) - 1, 0)
                by_line.setdefault(line, []).append(text)
        if all(p is not None for p, _ in group.inner) and all(
            len(v) == 1 for v in by_line.values()
        ):
            return {line: texts[0] for line, texts in by_line.items()}
        result = {}
        for position, text in group.inner:
            if position == group.last:
                result[max(bisect.bisect_right(group.line_starts, position) - 1, 0)] = text
            else:
                group.comments.append(_Comment(text))
        return result


def _closing_brace(span) -> Pos:
    return (span.end_line, span.end_column - 1)


def _blank(previous_end: Pos | None, token: Token) -> bool:
    return previous_end is not None and token.line - previous_end[0] >= 2


def _starts_paragraph(group: _Group) -> bool:
    return group.blank_before or any(c.blank_before for c in group.comments)


def _runs(groups: list[_Group], same) -> list[list[_Group]]:
    runs: list[list[_Group]] = []
    for group in groups:
        if runs and same(runs[-1][-1], group):
            runs[-1].append(group)
        else:
            runs.append([group])
    return runs


def _segments(ops: tuple[s.OpCall, ...]) -> list[list[s.OpCall]]:
    """The pipeline split where the user started a new line."""
    segments = [[ops[0]]]
    for previous, op in zip(ops, ops[1:], strict=False):
        if op.span.line > previous.span.end_line:
            segments.append([op])
        else:
            segments[-1].append(op)
    return segments
