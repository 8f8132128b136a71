"""Delta debugging: the smallest input that still fails the same way.

``ddmin`` (Zeller and Hildebrandt) removes chunks of an input, halving the
chunk size whenever no chunk can go, for as long as the failure stays the
same (``fails`` says so). A source is minimised by lines first, then by
tokens (:mod:`tests.fuzz.tokens`), then its white space is squeezed; bytes
that are not UTF-8 are minimised by lines, then byte by byte. Every call of
``fails`` runs the input in a worker, so a budget of calls and seconds
bounds the work; when it runs out, the smallest input found so far is the
answer.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence

from .tokens import tokenize


class _OutOfBudget(Exception):
    pass


class _Budget:
    def __init__(self, data: bytes, fails: Callable[[bytes], bool], tests: int, seconds: float):
        self.best = data  # the smallest input that failed so far
        self.fails = fails
        self.tests = tests
        self.deadline = time.monotonic() + seconds
        self.cache: dict[bytes, bool] = {}
        self.used = 0

    def __call__(self, data: bytes) -> bool:
        if data in self.cache:
            return self.cache[data]
        if self.used >= self.tests or time.monotonic() > self.deadline:
            raise _OutOfBudget
        self.used += 1
        self.cache[data] = verdict = self.fails(data)
        if verdict and len(data) < len(self.best):
            self.best = data
        return verdict


def ddmin(units: Sequence, fails: Callable[[list], bool]) -> list:
    """A smaller list of ``units`` for which ``fails`` holds (it holds for ``units``)."""
    units = list(units)
    n = 2
    while len(units) >= 2:
        size = math.ceil(len(units) / n)
        for start in range(0, len(units), size):
            candidate = units[:start] + units[start + size :]
            if candidate and fails(candidate):
                units = candidate
                n = max(n - 1, 2)
                break
        else:
            if n >= len(units):
                break
            n = min(2 * n, len(units))
    return units


def minimise(
    data: bytes, fails: Callable[[bytes], bool], tests: int = 3000, seconds: float = 60.0
) -> tuple[bytes, int]:
    """The smallest input found that ``fails`` like ``data``, and how many runs it took."""
    budget = _Budget(data, fails, tests, seconds)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        if text is None:
            lines = ddmin(data.splitlines(keepends=True), lambda u: budget(b"".join(u)))
            if sum(map(len, lines)) <= 4096:
                ddmin(list(b"".join(lines)), lambda u: budget(bytes(u)))
            return budget.best, budget.used
        lines = ddmin(text.split("\n"), lambda u: budget("\n".join(u).encode()))
        tokens = [t.text for t in tokenize("\n".join(lines))]
        text = "".join(ddmin(tokens, lambda u: budget("".join(u).encode())))
        squeezed = re.sub(r"[ \t]*\n\s*", "\n", re.sub(r"[ \t]{2,}", " ", text)).strip() + "\n"
        if squeezed != text:
            budget(squeezed.encode())
    except _OutOfBudget:
        pass
    return budget.best, budget.used
