"""Export a generated module to ONNX, and check the file in onnxruntime against eager.

``machc export`` calls :func:`export`; so can a program. It needs the packages
``onnx``, ``onnxscript`` (PyTorch's exporter) and, for the check,
``onnxruntime`` (``pip install 'machc[export]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 eager against onnxruntime


class ExportError(RuntimeError):
    """The module could not be exported, or the file does not compute what the module does."""


@dataclass
class Report:
    """What :func:`export` did: the file, its dynamic axes, and the check in onnxruntime."""

    path: str
    dynamic: list[str]  # "batch", and "time" for a machine over time whose loop exports
    checked: list[str] = field(default_factory=list)  # "batch 2: max error 1.2e-07", ...
    unchecked: str | None = None  # why the file was not run in onnxruntime
    fixed_time: str | None = None  # "time is fixed at N steps: why", if it is


def missing_packages(check: bool = True) -> list[str]:
    """The packages export needs that are not installed."""
    names = ["onnx", "onnxscript"] + (["onnxruntime"] if check else [])
    return [name for name in names if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def _quiet():
    """The exporter's own chatter (missing torchvision ops, deprecations) kept off the
    terminal; its errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.fx", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    chatter = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """The root of an exporter error, in a line: the innermost cause's first line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the exporter's terminal colours
    return f"{type(exc).__name__}: {text[:300]}"


def _outputs(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


def export(
    model: nn.Module,
    path: str | os.PathLike,
    batch: int = 2,
    steps: int | None = None,
    check: bool = True,
) -> Report:
    """Write ``model`` (a generated module, in eval mode) to the ONNX file ``path``.

    The batch axis is dynamic. The file is written completely or not at all. With
    ``check``, it runs in onnxruntime at ``batch`` and at another batch size, and its
    outputs must equal the module's (:data:`TOLERANCE`), or :class:`ExportError`.
    """
    over_time = hasattr(type(model), "DELAYS")
    model = model.eval()
    kwargs = {"steps": steps} if over_time and steps is not None else {}
    inputs = model.example_inputs(batch, **kwargs)
    names = list(type(model).INPUTS)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".machc-", suffix=".onnx")
    os.close(fd)
    sizes = _size_axes(model)
    try:
        # a machine over time: a dynamic time axis too, where its loops export as loops;
        # sizes known at call time ([3, H, W]): dynamic where the exporter keeps them so
        tries = [["batch", "time"], ["batch"]] if over_time else [["batch"]]
        if sizes:
            tries = [["batch", "sizes"], ["batch"]]
        fixed_time = None
        length = inputs[0].shape[1] if over_time else None
        for axes in tries:
            try:
                _export(model, inputs, names, temp, axes)
            except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, said plainly
                failure = f"torch.onnx.export failed: {_reason(exc)}"
                if axes is tries[-1]:
                    raise ExportError(failure) from exc
                fixed_time = f"time is fixed at {length} steps ({failure} with a dynamic time)"
                continue
            if "sizes" in axes:
                axes = ["batch", *_dynamic_sizes(temp, sizes)]
                break
            if _dynamic_axes(temp, axes) == axes:
                break
            # the exporter may fix an axis it could not keep dynamic, and say nothing
            fixed_time = (
                f"time is fixed at {length} steps: a step loop is a Python loop (it carries a "
                "sub-machine's state from step to step), which the exporter unrolls"
            )
            axes = _dynamic_axes(temp, axes)
            break
        report = Report(path=path, dynamic=axes, fixed_time=fixed_time)
        if check:
            _check(model, temp, batch, kwargs, report)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return report


def _size_axes(model: nn.Module) -> list[dict[int, str]]:
    """For each input, its axes (of the tensor, batch first) sized by a size symbol."""
    cls = type(model)
    found = [
        {axis: n for axis, n in enumerate(cls.SPACES[name], 1) if isinstance(n, str)}
        for name in cls.INPUTS
    ]
    return found if any(found) else []


def _export(model: nn.Module, inputs, names: list[str], file: str, axes: list[str]) -> None:
    dims = {"batch": torch.export.Dim("batch", min=1, max=1 << 20)}
    if "time" in axes:
        dims["time"] = torch.export.Dim("time", min=1, max=1 << 20)
    leading = [axis for axis in axes if axis in dims]
    dynamic = [{i: dims[axis] for i, axis in enumerate(leading)} for _ in inputs]
    if "sizes" in axes:  # the exporter keeps each dynamic where the module allows it
        for held, symbolic in zip(dynamic, _size_axes(model), strict=True):
            held.update(dict.fromkeys(symbolic, torch.export.Dim.AUTO))
    with _quiet():
        torch.onnx.export(
            model,
            tuple(inputs),
            file,
            dynamo=True,
            input_names=names,
            output_names=list(type(model).OUTPUTS),
            dynamic_shapes=tuple(dynamic),
            external_data=False,
            verbose=False,
        )


def _dynamic_sizes(file: str, sizes: list[dict[int, str]]) -> list[str]:
    """The size symbols whose axes are dynamic in every input of the ONNX file."""
    import onnx

    graph = onnx.load(file, load_external_data=False).graph
    fixed = set()
    for value, symbolic in zip(graph.input, sizes, strict=True):
        dims = value.type.tensor_type.shape.dim
        fixed |= {name for axis, name in symbolic.items() if dims[axis].HasField("dim_value")}
    names = dict.fromkeys(name for symbolic in sizes for name in symbolic.values())
    return [name for name in names if name not in fixed]


def _dynamic_axes(file: str, axes: list[str]) -> list[str]:
    """Those of ``axes`` that are dynamic in every input of the ONNX file."""
    import onnx

    graph = onnx.load(file, load_external_data=False).graph
    kept = []
    for index, axis in enumerate(axes):
        dims = [value.type.tensor_type.shape.dim[index] for value in graph.input]
        if all(not dim.HasField("dim_value") for dim in dims):
            kept.append(axis)
    return kept


def _check(model: nn.Module, file: str, batch: int, kwargs: dict, report: Report) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        report.unchecked = "onnxruntime is not installed (pip install onnxruntime)"
        return
    import onnxruntime

    session = onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])
    names = list(type(model).INPUTS)
    over_time = hasattr(type(model), "DELAYS")
    steps = None
    if over_time:
        steps = (
            kwargs.get("steps")
            or inspect.signature(model.example_inputs).parameters["steps"].default
        )
    # another batch size, and another length where time is dynamic (sizes known at call
    # time: twice the example sizes where they are dynamic)
    runs = [(batch, steps), (batch + 3, steps + 5 if "time" in report.dynamic else steps)]
    for size, length in runs:
        over = {"steps": length} if over_time else {}
        inputs = model.example_inputs(size, **over)
        larger = size != batch and len(report.dynamic) > 1 and not over_time  # sizes too
        if larger:
            inputs = _larger(model, inputs, report.dynamic)
            if inputs is None:
                report.checked.append("(sizes twice the example's refused by the module)")
                continue
        with torch.no_grad():
            want = _outputs(model(*inputs))
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}
        got = session.run(None, feed)
        worst = 0.0
        where = f"batch {size}" + (f", {length} steps" if over else "")
        if larger:
            where += ", twice the example sizes"
        for name, a, b in zip(type(model).OUTPUTS, got, want, strict=True):
            a = torch.from_numpy(a)
            try:
                torch.testing.assert_close(a, b.cpu(), **TOLERANCE)
            except AssertionError as exc:
                raise ExportError(
                    f"onnxruntime's output {name!r} at {where} differs from the module's: {exc}"
                ) from None
            worst = max(worst, float((a - b.cpu()).abs().max()) if a.numel() else 0.0)
        report.checked.append(f"{where}: max error {worst:.1e}")


def _larger(model: nn.Module, inputs, dynamic: list[str]) -> list[Tensor] | None:
    """Example inputs with every dynamic size doubled; None if the module refuses them."""
    from .sizes import SizeError

    larger = []
    for x, symbolic in zip(inputs, _size_axes(model), strict=True):
        shape = [n * 2 if symbolic.get(axis) in dynamic else n for axis, n in enumerate(x.shape)]
        larger.append(torch.randn(shape, dtype=x.dtype, device=x.device))
    try:
        with torch.no_grad():
            model(*larger)
    except SizeError:
        return None
    return larger
