"""A lossless tokenizer for .mach text, used to mutate sources and to minimise them.

It follows the grammar's terminals (``grammar/mach.lark``) loosely: it never
fails, and joining the tokens gives back the text exactly, whatever the text
is. Anything it does not recognise is one ``other`` token per character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\[^\n])*")
  | (?P<float>[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)
  | (?P<int>[0-9]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>->|→|×|\.\.|//|\*\*|==|!=|<=|>=|[-+*/%<>:=|,()\[\]{}.])
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Words of the grammar: never renamed by a mutation that renames identifiers.
KEYWORDS = frozenset(
    {"machine", "input", "space", "output", "for", "in", "over", "import", "true", "false"}
    | {"solve", "with", "if", "else", "and", "or", "not"}
)


@dataclass(frozen=True)
class Token:
    kind: str  # comment, string, float, int, name, punct, space, other
    text: str

    @property
    def blank(self) -> bool:
        """White space or a comment: what a minimiser leaves alone when deleting tokens."""
        return self.kind in ("space", "comment")


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``; ``"".join(t.text for t in tokenize(text)) == text``."""
    return [Token(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(text)]


def join(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens)


def identifiers(text: str) -> list[str]:
    """The distinct names of ``text`` that are not keywords, in order of appearance."""
    seen: dict[str, None] = {}
    for token in tokenize(text):
        if token.kind == "name" and token.text not in KEYWORDS:
            seen.setdefault(token.text)
    return list(seen)


def rename(text: str, old: str, new: str) -> str:
    """``text`` with every name token ``old`` replaced by ``new`` (strings and comments kept)."""
    return join([Token("name", new) if t == Token("name", old) else t for t in tokenize(text)])
