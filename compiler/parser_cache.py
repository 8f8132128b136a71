"""The grammar's LALR parser, built once and kept on disk.

Building the parse tables from ``mach.lark`` takes longer than checking a small
file, so the built parser is pickled into the user's cache directory under a
name that hashes everything it is made from: the grammar's text, the options,
the Lark version and the Python implementation. A changed grammar gets a file
of its own, so a stale parser is never loaded. The file is written whole or not
at all (a temporary file, then a rename); a cache that cannot be read or
written is passed over silently, and the parser is built as if there were none.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import lark
from lark import Lark


def cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/machc``, else ``~/.cache/machc`` (``%LOCALAPPDATA%\\machc`` on
    Windows); None when there is no home directory to put it in."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
    if not base:
        home = os.path.expanduser("~")
        if home == "~":
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "machc"


def load_parser(grammar: Path, directory: Path | None = None, **options) -> Lark:
    """``Lark.open(grammar, **options)``, from the cache in ``directory`` (default
    :func:`cache_dir`) when it holds this grammar's parser, else built and stored there."""
    directory = cache_dir() if directory is None else directory
    text = grammar.read_text(encoding="utf-8")
    path = None
    if directory is not None:
        path = directory / f"{grammar.stem}-{_key(text, options)}.lark.pickle"
        try:
            with open(path, "rb") as f:
                return Lark.load(f)
        # NOTE: anything may be wrong with a file someone else wrote (missing, cut short,
        # from another version, not a pickle): each just means the parser is built again.
        except Exception:  # noqa: BLE001
            pass
    # what Lark.open does, from the text the key was made of
    parser = Lark(text, source_path=str(grammar), **options)
    if path is not None:
        _store(parser, path)
    return parser


def _key(text: str, options: dict) -> str:
    made_of = [
        text,
        repr(sorted(options.items())),
        lark.__version__,
        sys.implementation.cache_tag or sys.version,
    ]
    return hashlib.sha256("\0".join(made_of).encode("utf-8")).hexdigest()[:32]


def _store(parser: Lark, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    except OSError:  # a read-only home, a file where the directory should be: no cache
        return
    try:
        with os.fdopen(fd, "wb") as f:
            parser.save(f)
        os.replace(temp, path)  # readers see the old file, or none, or the whole new one
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
