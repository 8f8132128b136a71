"""The ``machc`` command line.

Exit status: 0 success (warnings allowed), 1 the source has errors,
2 a usage error (bad arguments, unreadable or unwritable files),
3 an internal error (a bug in machc).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import traceback

from . import arguments
from .diagnostics import CompileError, render_all

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = arguments.parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    params = arguments.parse_params(parser.subcommands[args.command], args.params)
    for directory in getattr(args, "search_path", None) or []:
        if not os.path.isdir(directory):
            parser.subcommands[args.command].error(f"-I {directory}: no such directory")
    commands = {
        "compile": _compile,
        "check": _check,
        "ir": _ir,
        "graph": _graph,
        "info": _info,
        "fmt": lambda args, params: _fmt(args),
        "export": _export,
    }
    try:
        if argv is None:  # the machc program itself, not a call from Python
            _freeze_imports(args.command)
        return commands[args.command](args, params)
    except CompileError as exc:
        print(exc, file=sys.stderr)  # the diagnostics, rendered once
        count = len(exc.errors) + exc.omitted
        print(f"machc: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except _UsageError as exc:
        print(f"machc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (machc ir FILE | head): nothing to say
        # Python would complain again when it flushes stdout at exit; point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception:  # noqa: BLE001 - the last line of defence: a bug, reported as one
        print(
            "machc: internal error (a bug in machc; please report it with your .mach file):",
            file=sys.stderr,
        )
        traceback.print_exc()
        return EXIT_INTERNAL


def _freeze_imports(command: str) -> None:
    """Import the stages ``command`` needs, then put every object made so far out of the
    garbage collector's reach.

    NOTE: start-up time. Those objects (modules, classes, the IR's validators) live as
    long as the process; left in the collector's reach they are walked again and again
    while a small file is checked, and once more at exit: about a fifth of the CPU time
    of ``machc check`` on a small file (docs/benchmarks.md, "Start-up time"). Only the
    program does this: a caller of :func:`main` keeps its garbage collector as it was.
    """
    if command == "fmt":
        from . import fmt  # noqa: F401
    else:
        from . import driver  # noqa: F401 - every other command checks a file
    gc.freeze()


def _read(path: str) -> str:
    from .driver import read_source

    try:
        return read_source(path)
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _show_warnings(checked) -> None:
    if checked.warnings:
        print(render_all(checked.warnings, checked.sources), file=sys.stderr)


def _rewrites(args) -> list[str]:
    """The rewrites asked for: every one but those turned off with ``--no-NAME``."""
    from .rewrite import REWRITES

    return [name for name in REWRITES if not getattr(args, f"no_{name}", False)]


def _compile(args, params) -> int:
    from .driver import check_source, collector_paused
    from .emit import emit
    from .lower import lower
    from .rewrite import rewrite

    output = args.output or os.path.splitext(args.file)[0] + ".py"
    _refuse_source_as_output(output, args.file)
    with collector_paused():  # as check_source does (see there)
        checked = check_source(_read(args.file), args.file, params, args.search_path)
        _show_warnings(checked)
        view = lower(rewrite(checked.program, _rewrites(args)), args.expand_loops, checked.sources)
        # the IR goes before the module is written out (driver._compile), and while the
        # collector is off: freed after, it was walked once more (0.6 s of a 100,000-edge chain)
        del checked
        code = emit(view)
        del view
    if output == "-":
        sys.stdout.write(code)
    else:
        _write_atomically(output, code)
    return EXIT_OK


def _refuse_source_as_output(output: str, source: str) -> None:
    if output != "-" and os.path.exists(output) and os.path.exists(source):
        if os.path.samefile(output, source):
            raise _UsageError(f"the output {output} is the source file itself")


def _write_atomically(path: str, text: str | bytes, mode: int = 0o644) -> None:
    """Write all of ``text`` or nothing: a failed write leaves an existing file as it was.

    A symbolic link is written through (its target is replaced, the link stays); a
    directory, a device, a pipe or any other file that is not a regular file is refused.
    """
    shown = path
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        raise _UsageError(f"cannot write {shown}: it is {kind}")
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o777  # keep the file's permissions
    directory = os.path.dirname(path)
    suffix = os.path.splitext(path)[1] or ".tmp"
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".machc-", suffix=suffix)
    except OSError as exc:
        raise _UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as out:
                out.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as exc:
        os.unlink(temp)
        raise _UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _export(args, params) -> int:
    from .export import ExportUsageError, run

    try:
        return run(args, params, _read(args.file))
    except ExportUsageError as exc:
        raise _UsageError(str(exc)) from None


def _check(args, params) -> int:
    from .driver import check_source

    if args.format == "json":
        return _check_json(args, params)
    checked = check_source(_read(args.file), args.file, params, args.search_path)
    _show_warnings(checked)
    if not args.quiet:
        print(describe(checked.program))
    return EXIT_OK


def _check_json(args, params) -> int:
    """``check --format json``: every diagnostic, warnings too, as one JSON array on stdout."""
    from .driver import check_source

    try:
        checked = check_source(_read(args.file), args.file, params, args.search_path)
        diagnostics, status = checked.warnings, EXIT_OK
    except CompileError as exc:
        diagnostics, status = exc.diagnostics, EXIT_DIAGNOSTICS
    print(json.dumps([d.to_dict() for d in diagnostics], indent=2, ensure_ascii=False))
    return status


def _ir(args, params) -> int:
    from .driver import check_source
    from .ir import CheckedProgram

    if args.schema:
        if args.file or params:
            raise _UsageError("ir --schema takes no FILE and no --set")
        print(json.dumps(CheckedProgram.model_json_schema(), indent=2))
        return EXIT_OK
    if not args.file:
        raise _UsageError("ir needs a FILE.mach (or --schema)")
    from .rewrite import rewrite

    checked = check_source(_read(args.file), args.file, params, args.search_path)
    _show_warnings(checked)
    # what lower prints: the rewrites' decisions are in the structures (cells: ...)
    print(rewrite(checked.program, _rewrites(args)).model_dump_json(indent=2))
    return EXIT_OK


def _graph(args, params) -> int:
    from . import graph, matrix
    from .driver import check_source

    output = args.output or "-"
    ext = os.path.splitext(output)[1].lower().lstrip(".")
    formats = (*matrix.FORMATS, "txt") if args.matrix else graph.FORMATS
    if args.units and not args.matrix:
        raise _UsageError("--units goes with --matrix")
    if args.expand and args.matrix:
        raise _UsageError(
            "--expand does not go with --matrix: the weight picture shows a machine used as "
            "an edge as the blocks it fills; draw the sub-machine's own picture with --machine NAME"
        )
    if output != "-" and ext not in formats:
        names = ", ".join(f".{f}" for f in formats)
        what = "graph --matrix" if args.matrix else "graph"
        raise _UsageError(f"cannot tell the format of {output}: {what} writes {names}")
    _refuse_source_as_output(output, args.file)
    checked = check_source(_read(args.file), args.file, params, args.search_path, args.machine)
    _show_warnings(checked)
    machines = graph.select(checked.program, args.machine)
    if not machines:
        names = ", ".join(c.machine.key or c.machine.name for c in checked.program.machines)
        raise _UsageError(f"no machine {args.machine!r} in {args.file} (it has {names})")
    try:
        if args.matrix:
            pictures = [matrix.picture(c, units=args.units) for c in machines]
            if output == "-" or ext == "txt":
                data: str | bytes = matrix.matrix_text(pictures)
            else:
                data = matrix.render(pictures, ext)
        else:
            keys = [c.machine.key or c.machine.name for c in machines]
            data = graph.to_dot(checked.program, keys, expand=args.expand)
            if output != "-" and ext != "dot":
                data = graph.render(data, ext)
    except (graph.GraphError, matrix.MatrixError) as exc:
        raise _UsageError(str(exc)) from None
    if output == "-":
        sys.stdout.write(data)
    else:
        _write_atomically(output, data)
    return EXIT_OK


def _fmt(args) -> int:
    import difflib

    from .fmt import format_source

    status = EXIT_OK
    errors = 0
    for path in args.files:
        try:
            text = sys.stdin.read() if path == "-" else _read(path)
            name = "<stdin>" if path == "-" else path
            formatted = format_source(text, name)
        except CompileError as exc:
            print(exc, file=sys.stderr)
            errors += len(exc.errors) + exc.omitted
            status = max(status, EXIT_DIAGNOSTICS)
            continue
        except _UsageError as exc:
            print(f"machc: error: {exc}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if args.check:
            if formatted != text:
                diff = difflib.unified_diff(
                    text.splitlines(keepends=True),
                    formatted.splitlines(keepends=True),
                    name,
                    f"{name} (formatted)",
                )
                sys.stdout.writelines(line if line.endswith("\n") else line + "\n" for line in diff)
                print(f"machc: {name} is not formatted", file=sys.stderr)
                status = max(status, EXIT_DIAGNOSTICS)
        elif path == "-":
            sys.stdout.write(formatted)
        elif formatted != text:
            try:
                _write_atomically(path, formatted, os.stat(path).st_mode & 0o7777)
            except _UsageError as exc:
                print(f"machc: error: {exc}", file=sys.stderr)
                status = EXIT_USAGE
                continue
            print(f"machc: formatted {path}", file=sys.stderr)
    if errors:
        print(f"machc: {_count(errors, 'error')}", file=sys.stderr)
    return status


def _info(args, params) -> int:
    import json

    from .driver import check_source
    from .info import describe as describe_info
    from .info import program_info

    checked = check_source(_read(args.file), args.file, params, args.search_path)
    _show_warnings(checked)
    if args.format == "json":
        machines = [info.to_json() for info in program_info(checked.program)]
        print(json.dumps({"file": args.file, "machines": machines}, indent=2))
    else:
        print(describe_info(checked.program))
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


STAGE_WORDS = {  # how the edges of a stage of a machine over time run (ir.StageKind)
    "all": "every step at once",
    "forward": "step by step, forward in time",
    "backward": "step by step, backward in time",
}


def describe(program) -> str:
    """The structure report of ``machc check``: spaces with depths, levels of independent edges.

    A machine over time also gets the steps its edges read besides their own (earlier,
    later, windows) and its stages, in the order they run.
    """
    from .equilibrium import cycle_text
    from .ir import format_params
    from .sequences import kind_text
    from .source_text import source_label

    blocks = []
    for checked in program.machines:
        machine, structure = checked.machine, checked.structure
        params = format_params(machine.params)
        title = f"machine {machine.name}" + (f"({params})" if params else "")
        title += f" over {machine.time}" if machine.time else ""
        lines = [f"{title}  {source_label(machine.span.file)}:{machine.span.line}"]
        depth = max(structure.depth.values(), default=0)
        lines.append(
            f"  {_count(len(machine.spaces), 'space')}, {_count(len(machine.edges), 'edge')}, "
            f"depth {depth}"
        )
        width = max(5, *(len(s.name) for s in machine.spaces))
        shapes = {s.name: kind_text(s) for s in machine.spaces}
        shape_width = max(5, *(len(text) for text in shapes.values()))
        lines.append(f"  {'space'.ljust(width)}  role    {'shape'.ljust(shape_width)}  depth")
        for space in machine.spaces:
            lines.append(
                f"  {space.name.ljust(width)}  {space.role.value.ljust(6)}  "
                f"{shapes[space.name].ljust(shape_width)}  {structure.depth[space.name]}"
            )
        lines.append("  levels of independent edges:")
        for k, level in enumerate(structure.levels, 1):
            lines.append(f"    {k}: {', '.join(level)}")
        if structure.cycles:
            lines.append("  solved cycles:")
            lines += [f"    {cycle_text(cycle)}" for cycle in structure.cycles]
        if machine.time:
            lines += _describe_steps(machine, structure)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _describe_steps(machine, structure) -> list[str]:
    """What a machine over time reads besides each step's own spaces, and its stages."""
    t = machine.time
    past = ", ".join(f"{s}[{t}-{k}]" for s, k in structure.delays.items()) or "none"
    lines = [f"  reads of earlier steps: {past}"]
    ahead: dict[str, int] = {}  # space -> the most steps ahead it is read
    windows: list[str] = []  # every window read, once, in the order edges read them
    positions: list[str] = []  # the edges that read the step number
    for edge in machine.edges:
        for port in edge.inputs:
            if port.position:
                positions.append(edge.name)
            elif port.delay < 0:
                ahead[port.space] = max(ahead.get(port.space, 0), -port.delay)
            elif port.window is not None and port.text(t) not in windows:
                windows.append(port.text(t))
    if ahead:
        later = ", ".join(f"{s}[{t}+{k}]" for s, k in ahead.items())
        lines.append(f"  reads of later steps: {later}")
    if windows:
        lines.append(f"  reads of windows of steps: {', '.join(windows)}")
    if positions:
        lines.append(f"  reads of the step number {t}: {', '.join(positions)}")
    if not structure.causal:
        lines.append("  not causal: it reads later steps, so it cannot run in chunks (no state=)")
    for k, stage in enumerate(structure.stages, 1):
        lines.append(f"  stage {k}, {STAGE_WORDS[stage.kind]}: {', '.join(stage.edges)}")
    return lines
