"""``machc export``: compile a file, build one machine's module, write it as ONNX.

The compiler stays torch-free: this command loads the generated module and hands
it to :mod:`machc.runtime.onnx`, importing torch only when it runs.
"""

from __future__ import annotations

import os
import sys

from .diagnostics import render_all
from .driver import check_source
from .emit import emit
from .lower import lower
from .names import sanitize


class ExportUsageError(Exception):
    """Bad arguments or files: the CLI reports it as a usage error (exit 2)."""


EXIT_NOT_EXPORTED = 4  # the module could not be exported, or the file computes otherwise


def run(args, params, source_text: str) -> int:
    checked = check_source(source_text, args.file, params, args.search_path, args.machine)
    if checked.warnings:
        print(render_all(checked.warnings, checked.sources), file=sys.stderr)
    own = [c.machine for c in checked.program.machines if c.machine.key == c.machine.name]
    own = [m for m in own if m.span.file == checked.program.file]
    names = [m.name for m in own]
    name = args.machine or names[-1]
    if name not in names:
        raise ExportUsageError(
            f"--machine {name}: {args.file} defines no machine {name!r} (it defines "
            f"{', '.join(names)})"
        )
    from machc.runtime import loading
    from machc.runtime import onnx as onnx_export

    missing = onnx_export.missing_packages(check=not args.no_check)
    if missing:
        raise ExportUsageError(
            f"machc export needs {', '.join(missing)}: pip install 'machc[export]'"
        )
    from .cli import _rewrites
    from .rewrite import rewrite

    program = rewrite(checked.program, _rewrites(args))
    code = emit(lower(program, args.expand_loops, checked.sources))
    stem = sanitize(os.path.splitext(os.path.basename(args.file))[0])
    module_name = loading.module_name(stem, code)
    label = loading.file_label(args.file, module_name)
    module = loading.module_from_source(module_name, label, code)
    model = getattr(module, name)()
    if args.weights:
        _load_weights(model, args.weights)
    over_time = hasattr(type(model), "DELAYS")
    if args.steps is not None and not over_time:
        raise ExportUsageError(f"--steps: machine {name} is not a machine over time")
    try:
        report = onnx_export.export(
            model, args.onnx, batch=args.batch, steps=args.steps, check=not args.no_check
        )
    except onnx_export.ExportError as exc:
        print(f"machc: machine {name} was not exported: {exc}", file=sys.stderr)
        return EXIT_NOT_EXPORTED
    weights = f"weights from {args.weights}" if args.weights else "freshly initialised weights"
    lines = [f"machc: wrote {report.path}: machine {name}, {weights}"]
    fixed = f"; {report.fixed_time}" if report.fixed_time else ""
    lines.append(f"  dynamic axes: {', '.join(report.dynamic)}{fixed}")
    if report.checked:
        lines.append(f"  onnxruntime equals eager: {'; '.join(report.checked)}")
    else:
        lines.append(f"  not checked: {report.unchecked or '--no-check'}")
    print("\n".join(lines))
    return 0


def _load_weights(model, path: str) -> None:
    """A state_dict (or a checkpoint holding one under "state_dict" or "model")."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportUsageError(f"--weights {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - pickles of anything else, corrupt files
        message = f"--weights {path}: not a checkpoint torch can load: {exc}"
        raise ExportUsageError(message) from None
    if isinstance(saved, dict):
        for key in ("state_dict", "model"):
            if isinstance(saved.get(key), dict):
                saved = saved[key]
                break
    if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
        raise ExportUsageError(f"--weights {path}: holds no state_dict")
    try:
        result = model.load_state_dict(saved, strict=False)
    except RuntimeError as exc:  # shapes that differ
        reason = " ".join(str(exc).split())[:400]
        name = type(model).__name__
        raise ExportUsageError(f"--weights {path} does not fit machine {name}: {reason}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise ExportUsageError(
            f"--weights {path} does not fit machine {type(model).__name__}: " + "; ".join(problems)
        )
