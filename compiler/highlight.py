"""A Pygments lexer for .mach files, so that docs and tools can colour them.

Registered through the ``pygments.lexers`` entry point (see pyproject.toml):
with machc installed, ``pygmentize -l mach`` and Markdown's ``mach`` code
blocks use it. Only this module imports Pygments; the compiler never does.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

__all__ = ["MachLexer"]

NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class MachLexer(RegexLexer):
    """Lexer for machc's ``.mach`` language (hypergraphs of spaces and edges)."""

    name = "Mach"
    aliases = ["mach", "mach-error"]  # mach-error: the docs' examples that do not compile
    filenames = ["*.mach"]
    mimetypes = ["text/x-mach"]

    tokens = {
        "root": [
            include("space"),
            (
                r"(machine)(\s+)(" + NAME + r")(\s*)(\()",
                bygroups(Keyword, Whitespace, Name.Class, Whitespace, Punctuation),
                "params",
            ),
            (r"(machine)(\s+)(" + NAME + ")", bygroups(Keyword, Whitespace, Name.Class)),
            (
                r"(input|space|output)(\s+)(" + NAME + ")",
                bygroups(Keyword.Declaration, Whitespace, Name.Variable),
            ),
            (
                r"(import)(\s+)(" + NAME + r"(?:\." + NAME + r")*)",
                bygroups(Keyword.Namespace, Whitespace, Name.Namespace),
            ),
            # `solve z with anderson(...)`: the solver is named like an op
            (r"(with)(\s+)(" + NAME + ")", bygroups(Keyword, Whitespace, Name.Builtin)),
            (words(("for", "in", "if", "else", "over", "import", "solve"), suffix=r"\b"), Keyword),
            # An edge declaration: `name :` or `name[i] :` (spaces were taken above).
            (r"(" + NAME + r")(?=\s*(\[[^\]\n]*\])?\s*:)", Name.Function),
            # Ops: after `|`, and after the `=` of an edge (followed by `(`, `|` or a line end).
            (r"(\|)(\s*)(" + NAME + ")", bygroups(Operator, Whitespace, Name.Builtin)),
            (
                r"(=)([ \t]*)(" + NAME + r")(?=[ \t]*(\(|\||#|\n|\}|$))",
                bygroups(Operator, Whitespace, Name.Builtin),
            ),
            # A kind of space as a space's shape: `input tok : ids(vocab)`.
            (r"\b(ids)(?=\s*\()", Keyword.Type),
            include("expression"),
            (r"[{}]", Punctuation),
        ],
        "params": [
            include("space"),
            (r"(" + NAME + r")(\s*)(:)", bygroups(Name.Variable, Whitespace, Punctuation)),
            (words(("int", "float", "bool"), suffix=r"\b"), Keyword.Type),
            (r"\(", Punctuation, "#push"),
            (r"\)", Punctuation, "#pop"),
            include("expression"),
        ],
        "space": [
            (r"\s+", Whitespace),
            (r"#[^\n]*", Comment.Single),
        ],
        "expression": [
            (words(("true", "false"), suffix=r"\b"), Keyword.Constant),
            (words(("and", "or", "not"), suffix=r"\b"), Operator.Word),
            (r"\b(min|max)(?=\s*\()", Name.Builtin),
            (r'"([^"\\\n]|\\[^\n])*"', String.Double),
            (r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+", Number.Float),
            (r"[0-9]+", Number.Integer),
            (r"->|→|\.\.|//|\*\*|==|!=|<=|>=|[×*|=+\-/%<>]", Operator),
            (r"[()\[\],:]", Punctuation),
            (NAME, Name),
        ],
    }
