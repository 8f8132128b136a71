"""Raw bytes: random bytes, truncated UTF-8, byte-order marks, NUL, very long lines."""

from __future__ import annotations

import random

from .mutate import corpus

BOM = b"\xef\xbb\xbf"


def raw_bytes(rng: random.Random) -> tuple[str, bytes]:
    """(kind, data): bytes that are seldom a valid source, and never a valid UTF-8 one."""
    kind = rng.choice(
        [
            "random",
            "truncated",
            "bom",
            "nul",
            "long-line",
            "latin1",
            "utf16",
            "controls",
            "surrogate",
            "overlong",
            "crlf",
            "cr",
        ]
    )
    _, text = rng.choice(corpus())
    data = text.encode("utf-8")
    if kind == "random":
        return kind, rng.randbytes(rng.randint(0, 2000))
    if kind == "truncated":  # a multi-byte character cut short, somewhere in a real source
        cut = rng.randint(0, len(data))
        return kind, data[:cut] + rng.choice(["é", "×", "→", "😀"]).encode()[:-1] + data[cut:]
    if kind == "bom":
        return kind, rng.choice([BOM + data, data + BOM, BOM * 2 + data, BOM])
    if kind == "nul":
        cut = rng.randint(0, len(data))
        return kind, data[:cut] + b"\x00" * rng.randint(1, 3) + data[cut:]
    if kind == "long-line":  # < 10 kB in all
        body = rng.choice(
            [
                b"x",
                b"a" * 9000,
                b"# " + b"z" * 9000,
                b"(" * 4000 + b")" * 4000,
                b"machine " + b"M" * 9000 + b" {}",
                b'"' + b"s" * 9000 + b'"',
                b"1" * 9000,
                b"-" * 9000 + b"1",
                b"[" * 4500 + b"]" * 4500,
                b" " * 9000 + b"machine",
            ]
        )
        return kind, body
    if kind == "latin1":
        return kind, text.replace("×", "\xd7").encode("latin-1", errors="replace") + b"\xe9"
    if kind == "utf16":
        return kind, text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    if kind == "controls":
        cut = rng.randint(0, len(data))
        return kind, data[:cut] + bytes(rng.choice(range(32)) for _ in range(5)) + data[cut:]
    if kind == "surrogate":
        cut = rng.randint(0, len(data))
        return kind, data[:cut] + b"\xed\xa0\x80" + data[cut:]
    if kind == "overlong":
        cut = rng.randint(0, len(data))
        return kind, data[:cut] + rng.choice(
            [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xff", b"\xfe"]
        ) + data[cut:]
    if kind == "crlf":
        return kind, data.replace(b"\n", b"\r\n")
    return kind, data.replace(b"\n", b"\r")
