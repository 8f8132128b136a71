"""Token-level mutations of real sources: the examples, the standard library, the goldens
and the ``mach`` blocks of the docs.

Each mutant is one corpus file with one to four edits: a token deleted,
duplicated, swapped with a neighbour or replaced (by another token of the
file, a word of the language, a reserved name, or a number such as 0, -1 or
a huge one), every occurrence of a name renamed, a line deleted or
duplicated, or lines spliced in from another corpus file.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from .illformed import HUGE_TEXT, RESERVED
from .tokens import KEYWORDS, Token, identifiers, join, rename, tokenize

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```mach(?:-error)?\n(.*?)^```", re.MULTILINE | re.DOTALL)

VOCABULARY = [
    *KEYWORDS,
    "->",
    "→",
    "×",
    "*",
    "..",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    ":",
    "=",
    "|",
    ",",
    "+",
    "-",
    "//",
    "/",
    ".",
    "t",
    "t-1",
    "linear",
    "attention",
    "embedding",
    "shared",
    "ids",
    '"same"',
    '"x"',
    "0.5",
    "1e-3",
    "\n",
    " ",
    "#",
    '"',
    "\\",
]


@functools.cache
def corpus() -> tuple[tuple[str, str], ...]:
    """(name, text) of every corpus source, in a fixed order."""
    paths = [
        *sorted((ROOT / "examples").glob("*.mach")),
        *sorted((ROOT / "compiler" / "std").glob("*.mach")),
        *sorted((ROOT / "tests" / "golden").rglob("*.mach")),
    ]
    items = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for k, match in enumerate(_FENCE.finditer(text)):
            items.append((f"{doc.relative_to(ROOT)}#{k}", match.group(1)))
    return tuple(items)


def mutant(rng: random.Random) -> tuple[str, str]:
    """(origin, text): a corpus source with a few random edits."""
    name, text = rng.choice(corpus())
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        text = rng.choice(_EDITS)(rng, text)
    return name, text


def _solid(tokens: list[Token]) -> list[int]:
    return [i for i, t in enumerate(tokens) if not t.blank]


def _delete(rng, text):
    tokens = tokenize(text)
    spots = _solid(tokens)
    if spots:
        del tokens[rng.choice(spots)]
    return join(tokens)


def _duplicate(rng, text):
    tokens = tokenize(text)
    spots = _solid(tokens)
    if spots:
        i = rng.choice(spots)
        tokens.insert(i, Token("other", tokens[i].text + rng.choice(["", " "])))
    return join(tokens)


def _swap(rng, text):
    tokens = tokenize(text)
    spots = _solid(tokens)
    if len(spots) >= 2:
        k = rng.randrange(len(spots) - 1)
        i, j = spots[k], spots[k + 1] if rng.random() < 0.7 else rng.choice(spots)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return join(tokens)


def _replace(rng, text):
    tokens = tokenize(text)
    spots = _solid(tokens)
    if not spots:
        return text
    i = rng.choice(spots)
    roll = rng.random()
    if roll < 0.3:
        new = tokens[rng.choice(spots)].text
    elif roll < 0.6:
        new = rng.choice(VOCABULARY)
    elif roll < 0.8:
        new = rng.choice(RESERVED)
    else:
        new = rng.choice(["0", "-1", "1", "2", *HUGE_TEXT])
    tokens[i] = Token("other", new)
    return join(tokens)


def _number(rng, text):
    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.kind in ("int", "float")]
    if spots:
        new = rng.choice(["0", "-1", "1", "2", "3", *HUGE_TEXT, "0.0", "-0.5", "1e309"])
        tokens[rng.choice(spots)] = Token("other", new)
    return join(tokens)


def _rename(rng, text):
    names = [n for n in identifiers(text)]
    if names:
        text = rename(text, rng.choice(names), rng.choice(RESERVED))
    return text


def _lines(rng, text):
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    roll = rng.random()
    if roll < 0.4:
        del lines[i]
    elif roll < 0.7:
        lines.insert(i, lines[rng.randrange(len(lines))])
    else:
        _, other = rng.choice(corpus())
        donor = other.split("\n")
        j = rng.randrange(len(donor))
        lines[i:i] = donor[j : j + rng.randint(1, 5)]
    return "\n".join(lines)


_EDITS = [_delete, _duplicate, _swap, _replace, _replace, _number, _number, _rename, _lines]
