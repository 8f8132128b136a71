"""The ``machc`` command line's arguments: every sub-command and its options.

:func:`parser` builds the argument parser :func:`machc.cli.main` runs; it imports no
stage of the compiler (``machc --help`` and argument errors need none), only the names
of the rewrites for speed and the drawing's limit, where an option's help shows them.
"""

from __future__ import annotations

import argparse

from . import __version__


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``machc``'s arguments ``argv``: with only the sub-command that
    ``argv`` starts with, if it starts with one (``machc check F``: about 3 ms less to
    start), else with every sub-command (``machc --help``, a mistyped command)."""
    first = argv[0] if argv else None
    parser = argparse.ArgumentParser(
        prog="machc",
        description="Compile .mach hypergraph machines into PyTorch modules.",
    )
    parser.add_argument("--version", action="version", version=f"machc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.subcommands = {}
    for name, (summary, description, options) in _COMMANDS.items():
        if first in _COMMANDS and name != first:
            continue
        sub = commands.add_parser(name, help=summary, description=description)
        options(sub)
        parser.subcommands[name] = sub
    return parser


def _file(sub: argparse.ArgumentParser) -> None:
    """The source file, and how it is read."""
    sub.add_argument("file", metavar="FILE.mach", help="the source file")
    source_options(sub)


def _compile(sub: argparse.ArgumentParser) -> None:
    _file(sub)
    sub.add_argument(
        "-o",
        "--output",
        metavar="OUT.py",
        help="where to write the module ('-': standard output; default: FILE.py beside FILE.mach)",
    )
    code_options(sub)


def _check(sub: argparse.ArgumentParser) -> None:
    _file(sub)
    sub.add_argument("-q", "--quiet", action="store_true", help="print only diagnostics")
    sub.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="how to print diagnostics: text on standard error (default), or a JSON array "
        "on standard output (then no structure report)",
    )


def _ir(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE.mach", nargs="?", help="the source file")
    rewrite_options(sub)
    source_options(sub)
    sub.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of the IR (no FILE)"
    )


def _graph(sub: argparse.ArgumentParser) -> None:
    from .matrix import MAX_UNITS

    _file(sub)
    sub.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the drawing; the extension picks the format: .svg, .png, .pdf "
        "(run Graphviz's dot) or .dot; with --matrix .png, .svg, .pdf or .txt. "
        "Default (or '-'): DOT text, or the matrix as text, on standard output",
    )
    sub.add_argument(
        "--machine",
        metavar="NAME",
        help="draw only this machine: one of the file, or an imported one used as an edge, by "
        "name or by class name (default: every machine defined in the file)",
    )
    sub.add_argument(
        "--expand",
        action="store_true",
        help="draw each machine used as an edge as a frame of its own spaces and edges "
        "(nested), instead of one box; not with --matrix",
    )
    sub.add_argument(
        "--matrix",
        action="store_true",
        help="draw the global weight picture: one row and column per space, rows 'to', "
        "columns 'from'",
    )
    sub.add_argument(
        "--units",
        action="store_true",
        help=f"with --matrix: one row and column per unit (at most {MAX_UNITS} units)",
    )


def _fmt(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "files",
        nargs="+",
        metavar="FILE.mach",
        help="the files ('-': read standard input, write standard output)",
    )
    sub.add_argument(
        "--check",
        action="store_true",
        help="write nothing; show a diff and exit 1 if a file is not in the canonical layout",
    )
    sub.set_defaults(params=[])


def _info(sub: argparse.ArgumentParser) -> None:
    _file(sub)
    sub.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="aligned tables (default), or JSON for programs",
    )


def _export(sub: argparse.ArgumentParser) -> None:
    _file(sub)
    code_options(sub)
    sub.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the file to write")
    sub.add_argument(
        "--machine", metavar="NAME", help="the machine to export (default: the file's last)"
    )
    sub.add_argument(
        "--weights", metavar="CKPT", help="a state_dict saved with torch.save (default: fresh)"
    )
    sub.add_argument(
        "--batch", type=positive, default=2, metavar="N", help="batch of the example inputs"
    )
    sub.add_argument(
        "--steps", type=positive, metavar="T", help="steps of the example inputs (over time)"
    )
    sub.add_argument("--no-check", action="store_true", help="do not run the file in onnxruntime")


# sub-command -> (its line in machc --help, its description, what adds its options)
_COMMANDS = {
    "compile": (
        "write the generated PyTorch module",
        "Write the generated PyTorch module.",
        _compile,
    ),
    "check": (
        "check a file and report its structure",
        "Check a file and report each machine's spaces (with depth), levels of independent "
        "edges and, over time, its stages.",
        _check,
    ),
    "ir": (
        "print the checked IR as JSON",
        "Print the checked IR (a CheckedProgram) of a file as JSON, after the rewrites for "
        "speed (what compile prints), or with --schema the JSON Schema of that IR.",
        _ir,
    ),
    "graph": (
        "draw the hypergraph or the weight matrix",
        "Draw each machine's hypergraph with Graphviz (spaces, edges, dependency order left "
        "to right), or with --matrix its global weight picture.",
        _graph,
    ),
    "fmt": (
        "lay out .mach files in the canonical style",
        "Rewrite .mach files in place in the canonical layout (only the layout changes: what "
        "a file compiles to stays the same).",
        _fmt,
    ),
    "info": (
        "tabulate each machine's spaces, edges, parameters and cost",
        "Check a file and print, for each machine, its spaces, its edges with their learned "
        "parameters and multiply-accumulates per sample, its levels of independent edges and "
        "the totals.",
        _info,
    ),
    "export": (
        "write one machine as an ONNX file, checked in onnxruntime",
        "Compile a file, build one machine's module (fresh weights, or --weights), export it "
        "to ONNX with a dynamic batch axis, and check the file in onnxruntime against the "
        "module. Needs pip install 'machc[export]'.",
        _export,
    ),
}
COMMANDS = tuple(_COMMANDS)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1 << 20:
        raise argparse.ArgumentTypeError(f"must be from 1 to {1 << 20}, got {value}")
    return value


def source_options(sub: argparse.ArgumentParser) -> None:
    """``--set NAME=VALUE`` and ``-I DIR``: how the source file is read."""
    sub.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind a machine parameter (NAME or Machine.NAME); may be repeated",
    )
    sub.add_argument(
        "-I",
        dest="search_path",
        action="append",
        default=[],
        metavar="DIR",
        help="also look for imported files in DIR (after the importing file's directory); "
        "may be repeated",
    )


def parse_params(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            parser.error(f"--set needs NAME=VALUE, got {item!r}")
        if name in params:
            parser.error(f"--set {name} given twice")
        params[name] = value
    return params


def code_options(parser: argparse.ArgumentParser) -> None:
    """How the module is written: ``--expand-loops``, and the rewrites for speed."""
    parser.add_argument(
        "--expand-loops",
        action="store_true",
        help="write every for loop out edge by edge (layers g_1, g_2, ...) instead of "
        "keeping it a loop over a ModuleDict (g.1, g.2, ...)",
    )
    rewrite_options(parser)


def rewrite_options(parser: argparse.ArgumentParser) -> None:
    """``--no-NAME`` for every rewrite for speed (docs/performance.md)."""
    from .rewrite import REWRITES

    helps = {
        "cells": "keep the step loop of a machine whose step is PyTorch's RNN, LSTM or "
        "GRU cell (default: forward calls PyTorch's fused kernel; docs/performance.md)",
        "regroup": "let forward keep the concatenation of a dense block's inputs for the "
        "backward (default: the spaces themselves, concatenated again in the backward; "
        "docs/performance.md)",
    }
    for name in REWRITES:
        parser.add_argument(f"--no-{name}", action="store_true", help=helps[name])
