"""The worker: checks, compiles and runs one input at a time, and says what happened.

It runs as its own process (``python -m tests.fuzz.worker``), reading one
JSON request per line on standard input and writing one JSON
:class:`~tests.fuzz.outcomes.Result` per line on standard output, so that
the runner can kill it when an input hangs or crashes it. Its address space
is bounded (``RLIMIT_AS``): running out is a blow-up, not a dead machine.
Checking and compiling are interrupted by ``SIGPROF`` when they have used
the time limit in CPU time (so that a busy machine does not make hangs), and
a hang comes back with the stack where it was. torch is imported here only,
and only when modules are run.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import json
import linecache
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

from .outcomes import HANG_SECONDS, Outcome, Result, blank

ROOT = Path(__file__).resolve().parents[2]
GENERATED = "<machc-fuzz>"  # the file name of generated code in tracebacks

KB = 1024
SMALL_INPUT = 10 * KB  # the time limit is for inputs up to this size (longer: in proportion)
MAX_MODULE = 50 * KB * KB  # a generated module larger than this is a blow-up
TOO_LARGE = 2**31  # a space or layer this large passes check: a blow-up
RUN_ELEMENTS = 4_000_000  # modules with larger spaces or layers are checked, not run
RUN_MACS = 200_000_000
RUN_EDGES = 20_000  # modules with more edges are checked, not run (a module object each)
BATCH, STEPS = 2, 3
MAX_WRITTEN_OUT_COMPARED = 5_000  # edges of a module whose loops are compared written out
# Classes that generated code may import through module(...) when the fuzzer runs it.
SAFE_MODULES = re.compile(
    r"torch\.nn\.(Identity|ReLU|Tanh|GELU|Sigmoid|SiLU|Linear|LayerNorm|Softmax|Dropout|"
    r"Flatten|Conv1d|Conv2d)"
)


# What _run says when a class of module(...) refused its arguments or its input.
USER_MISTAKE = ("user", "", "")


class Hang(BaseException):
    """Raised by the CPU-time alarm. A BaseException, so that no ``except Exception``
    swallows it."""


def _alarm(signum, frame):
    raise Hang


class Checker:
    """Checks, compiles and (optionally) runs inputs in a scratch directory."""

    def __init__(self, run: bool = True, hang_seconds: float = HANG_SECONDS):
        import machc  # noqa: F401 - the compiler is loaded before any input is timed
        import machc.regroup
        from machc.driver import check_source

        # Fuzz inputs are small: the rewrite regroup takes every edge it can, not only
        # those its cost model finds worth it, so that runtime.regroup is run (and
        # checked against the plain form) on everything the fuzzer makes.
        machc.regroup.MIN_NUMBERS = 1

        self.run = run
        self.hang_seconds = hang_seconds
        self.directory = Path(tempfile.mkdtemp(prefix="machc-fuzz-"))
        # Imports relative to the input ("blocks.mach", "net.mach") find the examples.
        for example in (ROOT / "examples").glob("*.mach"):
            shutil.copy(example, self.directory / example.name)
        self.path = self.directory / "fuzz.mach"
        self.compiler = Path(sys.modules["machc"].__file__).resolve().parent
        # Found without importing it: machc.runtime imports torch.
        self.runtime = Path(importlib.util.find_spec("machc.runtime").origin).resolve().parent
        if run:
            import machc.runtime
            import torch

            torch.set_num_threads(1)
            self.external: set[int] = set()  # the layers module(...) made, by id
            external = machc.runtime.external

            def recorded(*args, **kwargs):
                layer = external(*args, **kwargs)
                self.external.add(id(layer))
                return layer

            machc.runtime.external = recorded
        warnings.simplefilter("ignore")
        check_source("machine W { input x : 1\n output y : 1\n e : x -> y = linear }")
        self.loaded = 0

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- one input ------------------------------------------------------------------

    def classify(self, data: bytes, params: dict[str, str], on_run=None) -> Result:
        """What checking, compiling and running ``data`` with ``params`` comes to."""
        self.path.write_bytes(data)
        limit = self.hang_seconds * max(1.0, len(data) / SMALL_INPUT)
        start = time.process_time()
        previous = signal.signal(signal.SIGPROF, _alarm)
        signal.setitimer(signal.ITIMER_PROF, limit)
        try:
            checked, source = self._compile(params)
        except Hang:
            return Result(
                Outcome.HANG,
                "Hang",
                # The file, not the function: where an alarm lands in a slow loop varies.
                self._frame(sys.exc_info()[2]).split(":")[0] or "-",
                f"checking and compiling took more than {limit:g} s of CPU time; "
                "interrupted here:\n" + traceback.format_exc(),
                time.process_time() - start,
            )
        except MemoryError:
            return Result(
                Outcome.BLOW_UP,
                "MemoryError",
                self._frame(sys.exc_info()[2]),
                "checking and compiling ran out of the memory bound:\n" + traceback.format_exc(),
                time.process_time() - start,
            )
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            from machc.diagnostics import CompileError

            seconds = time.process_time() - start
            if isinstance(exc, CompileError):
                complaint = _improper(exc)
                if complaint is None:
                    return Result(Outcome.OK_DIAGNOSTIC, seconds=seconds)
                return Result(
                    Outcome.INTERNAL_ERROR,
                    "ImproperDiagnostic",
                    complaint[0],
                    complaint[1] + "\n\nThe diagnostics:\n" + str(exc),
                    seconds,
                )
            return Result(
                Outcome.INTERNAL_ERROR,
                type(exc).__name__,
                self._frame(exc.__traceback__),
                traceback.format_exc(),
                seconds,
            )
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)
        seconds = time.process_time() - start
        if seconds > limit:  # the alarm came late, or was swallowed
            return Result(Outcome.HANG, "Hang", "-", f"took {seconds:.1f} s > {limit:g} s", seconds)
        if len(source) > MAX_MODULE:
            return Result(
                Outcome.BLOW_UP,
                "ModuleSize",
                "-",
                f"the generated module has {len(source):,} characters for an input of "
                f"{len(data):,} bytes",
                seconds,
            )
        large = _too_large(checked.program)
        if large:
            return Result(Outcome.BLOW_UP, "SizeOverflow", "check", large, seconds)
        if not self.run or not _worth_running(checked.program, source):
            return Result(Outcome.OK_MODULE, seconds=seconds)
        if on_run is not None:
            on_run()
        failure = self._run(source, checked.program)
        if failure == USER_MISTAKE:
            return Result(Outcome.OK_MODULE, seconds=seconds)
        if failure is not None and failure[0] == "MemoryError":  # importing or running it
            return Result(Outcome.BLOW_UP, "MemoryError", failure[1], failure[2], seconds)
        if failure is not None:
            return Result(Outcome.MISCOMPILE, failure[0], failure[1], failure[2], seconds)
        return Result(Outcome.OK_MODULE, seconds=seconds, ran=True)

    def _compile(self, params: dict[str, str]):
        """What ``machc check`` and then ``machc compile`` do with the file (checking once:
        ``compile_file`` is ``check_file``, its warnings, ``lower`` and ``emit``)."""
        from machc.driver import check_file
        from machc.emit import emit
        from machc.info import describe
        from machc.lower import lower
        from machc.rewrite import rewrite

        checked = check_file(self.path, params)
        describe(checked.program)  # the report of `machc check`
        for diagnostic in checked.warnings:
            diagnostic.render(checked.sources)
        program = rewrite(checked.program)  # every rewrite, as machc compile
        checked = dataclasses.replace(checked, program=program)
        return checked, emit(lower(program, sources=checked.sources))

    def _frame(self, tb) -> str:
        """The innermost frame of ``tb`` in machc's code, as ``compiler/file.py:function``."""
        found = ""
        for frame in traceback.extract_tb(tb):
            path = Path(frame.filename)
            for base, label in ((self.compiler, "compiler"), (self.runtime, "runtime")):
                if path.is_relative_to(base):
                    found = f"{label}/{path.relative_to(base)}:{frame.name}"
            if frame.filename == GENERATED:
                found = f"generated:{frame.name}"
        return found

    # -- running the generated module ---------------------------------------------------

    def _run(self, source: str, program) -> tuple[str, str, str] | None:
        """None if every class of the module works; else (kind, frame, explanation)."""
        import torch
        from torch import nn

        self.phase = "import"
        self.external.clear()
        try:
            code = compile(source, GENERATED, "exec")
            self.loaded += 1
            module = types.ModuleType(f"machc_fuzz_{self.loaded}")
            linecache.cache[GENERATED] = (len(source), None, source.splitlines(True), GENERATED)
            exec(code, module.__dict__)  # noqa: S102 - generated from a fuzz input, checked above
            classes = [
                value
                for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, nn.Module)
            ]
            if len(classes) != len(program.machines):
                names = [c.__name__ for c in classes]
                return (
                    "ClassCount",
                    "generated",
                    f"{len(program.machines)} machines but classes {names}",
                )
            structures = {c.machine.key or c.machine.name: c.structure for c in program.machines}
            for cls in classes:
                self.phase = f"class {cls.__name__}: construct"
                torch.manual_seed(0)
                model = cls().double().eval()
                failure = self._run_class(cls, model, structures.get(cls.__name__))
                if failure:
                    return failure
            if "nn.ModuleDict(" in source:  # loops kept as loops: against their edges
                failure = self._loops_agree(program, classes)
                if failure:
                    return failure
            if "runtime.regroup(" in source:  # the rewrite regroup: against the plain form
                failure = self._regroup_agrees(program, classes)
                if failure:
                    return failure
        except Exception as exc:  # noqa: BLE001
            # (torch's failure to allocate is a RuntimeError: the memory bound too)
            if isinstance(exc, MemoryError) or "std::bad_alloc" in str(exc):
                return (
                    "MemoryError",
                    self.phase.split(":")[0],
                    f"{self.phase}: the module of {len(source):,} characters ran out of the "
                    f"memory bound:\n{traceback.format_exc()}",
                )
            if _user_module_refused(exc) or self._in_user_module(exc.__traceback__):
                return USER_MISTAKE
            return (
                f"{type(exc).__name__}: {blank(str(exc))}",
                self._frame(exc.__traceback__) or self.phase,
                f"{self.phase}:\n{traceback.format_exc()}",
            )
        return None

    def _loops_agree(self, program, classes) -> tuple[str, str, str] | None:
        """None if every class with loops kept as loops computes, in eval mode and float64,
        what the module with every loop written out edge by edge computes, with the same
        weights (``g.3.weight`` is ``g_3.weight`` there)."""
        import torch
        from machc.diagnostics import CompileError
        from machc.emit import emit
        from machc.lower import lower
        from torch import nn

        if sum(len(c.machine.edges) for c in program.machines) > MAX_WRITTEN_OUT_COMPARED:
            return None  # written out, too large for the worker's memory
        self.phase = "loops written out: compile and import"
        try:
            source = emit(lower(program, expand_loops=True))
        except CompileError:  # too large written out (a limit of machc compile): no comparison
            return None
        module = types.ModuleType(f"machc_fuzz_{self.loaded}_expanded")
        exec(compile(source, GENERATED + "expanded", "exec"), module.__dict__)  # noqa: S102
        for cls in classes:
            other = getattr(module, cls.__name__, None)
            where = f"class {cls.__name__}: loops kept against written out"
            self.phase = where
            kept = cls().double().eval()
            if other is None or not any(isinstance(m, nn.ModuleDict) for m in kept.children()):
                continue
            written = other().double().eval()
            state = {}
            for key, value in kept.state_dict().items():
                head, _, rest = key.partition(".")
                if isinstance(getattr(kept, head, None), nn.ModuleDict):
                    index, _, tail = rest.partition(".")
                    key = f"{head}_{index}" + (f".{tail}" if tail else "")
                state[key] = value
            if set(state) != set(written.state_dict()):
                continue  # named otherwise (a clash renamed one): nothing to compare by name
            written.load_state_dict(state)
            spaces = _shapes(cls)
            torch.manual_seed(3)
            inputs = [torch.randn(BATCH, *spaces[n], dtype=torch.float64) for n in cls.INPUTS]
            with torch.no_grad():
                outs, refs = kept(*inputs), written(*inputs)
            outs = tuple(outs) if isinstance(outs, tuple) else (outs,)
            refs = tuple(refs) if isinstance(refs, tuple) else (refs,)
            for name, out, ref in zip(cls.OUTPUTS, outs, refs, strict=True):
                if not torch.allclose(out, ref, rtol=1e-9, atol=1e-9, equal_nan=True):
                    worst = (out - ref).abs().nan_to_num(nan=math.inf).max().item()
                    return (
                        "LoopsDisagree",
                        "forward",
                        f"{where}: {name!r} differs by up to {worst:g}",
                    )
        return None

    def _regroup_agrees(self, program, classes) -> tuple[str, str, str] | None:
        """None if every class computes, in training mode, forward and backward, what it
        computes compiled without the rewrite regroup (float64, the same weights and
        random masks): outputs and parameter gradients."""
        import torch
        from machc.emit import emit
        from machc.lower import lower

        self.phase = "without regroup: compile and import"
        plain = program.model_copy(
            update={
                "machines": tuple(
                    m.model_copy(
                        update={
                            "structure": m.structure.model_copy(
                                update={"regrouped": {}, "regroup_columns": {}}
                            )
                        }
                    )
                    for m in program.machines
                )
            }
        )
        module = types.ModuleType(f"machc_fuzz_{self.loaded}_plain")
        exec(compile(emit(lower(plain)), GENERATED + "plain", "exec"), module.__dict__)  # noqa: S102
        regrouped_classes = {
            m.machine.key or m.machine.name for m in program.machines if m.structure.regrouped
        }
        for cls in classes:
            if cls.__name__ not in regrouped_classes:
                continue  # (over time, for one: inputs [batch, time, ...])
            where = f"class {cls.__name__}: regroup against the plain form"
            self.phase = where
            torch.manual_seed(0)
            regrouped = cls().double().train()
            other = getattr(module, cls.__name__)().double().train()
            other.load_state_dict(regrouped.state_dict())
            spaces = _shapes(cls)
            results = []
            for model in (regrouped, other):
                torch.manual_seed(3)
                inputs = [torch.randn(BATCH, *spaces[n], dtype=torch.float64) for n in cls.INPUTS]
                outs = model(*inputs)
                outs = tuple(outs) if isinstance(outs, tuple) else (outs,)
                total = sum(o.sum() for o in outs)
                if total.requires_grad:  # (no output may depend on a parameter)
                    total.backward()
                grads = [p.grad for p in model.parameters()]
                results.append((outs, grads))
            (outs, grads), (refs, ref_grads) = results
            pairs = list(zip(outs, refs, strict=True)) + [
                (g, r) for g, r in zip(grads, ref_grads, strict=True) if g is not None
            ]
            for out, ref in pairs:  # the same kernels on the same numbers: bitwise equal
                if not torch.allclose(out, ref, rtol=0, atol=0, equal_nan=True):
                    worst = (out - ref).abs().nan_to_num(nan=math.inf).max().item()
                    return ("RegroupDisagrees", "forward", f"{where}: differs by up to {worst:g}")
        return None

    def _in_user_module(self, tb) -> bool:
        """Whether the exception came from inside a layer that module(...) made: a class
        given arguments that do not fit its input is the user's mistake, not machc's."""
        while tb is not None:
            if id(tb.tb_frame.f_locals.get("self")) in self.external:
                return True
            tb = tb.tb_next
        return False

    def _run_class(self, cls, model, structure=None) -> tuple[str, str, str] | None:
        """Forward against resolvent (and the adjoint's shapes) on random inputs; for a
        machine with sizes known at call time, at its example sizes and again at the
        smallest sizes it takes (see :func:`_small_sizes`)."""
        import torch

        over_time = hasattr(cls, "DELAYS")
        ids = getattr(cls, "IDS", {})
        spaces = _shapes(cls)
        for steps in (STEPS, 1):
            lead = (BATCH, steps) if over_time else (BATCH,)
            torch.manual_seed(1)
            inputs = []
            for name in cls.INPUTS:
                if name in ids:
                    inputs.append(torch.randint(0, ids[name], lead))
                else:
                    inputs.append(torch.randn(*lead, *spaces[name], dtype=torch.float64))
            self.phase = f"class {cls.__name__}: forward on {[tuple(x.shape) for x in inputs]}"
            try:
                with torch.no_grad():
                    out = model(*inputs)
                break
            except IndexError as exc:  # more steps than positions: the caller's mistake
                if steps == 1 or "positions" not in str(exc):
                    raise
        where = f"class {cls.__name__}"
        failure, state = self._agree(cls, model, inputs, out, lead, spaces, where)
        if failure is not None:
            return failure
        if hasattr(model, "adjoint"):  # machines not over time: the backward pass as a machine
            self.phase = f"class {cls.__name__}: adjoint"
            cotangent = {name: torch.ones_like(state[name]) for name in cls.OUTPUTS}
            bar = model.adjoint(state, cotangent)
            for name in cls.SPACES:
                if name not in bar or tuple(bar[name].shape) != tuple(state[name].shape):
                    got = tuple(bar[name].shape) if name in bar else "nothing"
                    return ("AdjointShape", "adjoint", f"{where}: adjoint[{name!r}] is {got}")
        sizes = _small_sizes(structure) if structure is not None and not over_time else None
        if sizes is None:
            return None
        # The same at other sizes: the sizes of each space, as shapes() gives them.
        spaces = model.shapes(**sizes)
        torch.manual_seed(2)
        inputs = [
            torch.randint(0, ids[name], (BATCH,))
            if name in ids
            else torch.randn(BATCH, *spaces[name], dtype=torch.float64)
            for name in cls.INPUTS
        ]
        self.phase = f"{where}: forward at {sizes} on {[tuple(x.shape) for x in inputs]}"
        with torch.no_grad():
            out = model(*inputs)
        failure, _ = self._agree(cls, model, inputs, out, (BATCH,), spaces, f"{where} at {sizes}")
        return failure

    def _agree(self, cls, model, inputs, out, lead, spaces, where):
        """(None, resolvent's state) if forward's outputs ``out`` are what ``OUTPUTS`` and
        ``spaces`` say and what ``resolvent`` gives on the same inputs; else (the failure,
        None)."""
        import torch

        outs = tuple(out) if isinstance(out, tuple) else (out,)
        if len(outs) != len(cls.OUTPUTS):
            failure = ("OutputCount", "forward", f"{where}: {len(outs)} outputs, {cls.OUTPUTS}")
            return failure, None
        for name, tensor in zip(cls.OUTPUTS, outs, strict=True):
            want = (*lead, *spaces[name])
            if tuple(tensor.shape) != want:
                return (
                    "OutputShape",
                    "forward",
                    f"{where}: output {name!r} is {tuple(tensor.shape)}, SPACES says {want}",
                ), None
        self.phase = f"{where}: resolvent"
        with torch.no_grad():
            state = model.resolvent(dict(zip(cls.INPUTS, inputs, strict=True)))
        for name, shape in spaces.items():  # every space, as SPACES (or shapes()) says
            if name in state and tuple(state[name].shape) != (*lead, *shape):
                return (
                    "ResolventShape",
                    "resolvent",
                    f"{where}: resolvent[{name!r}] is {tuple(state[name].shape)}, SPACES "
                    f"says {(*lead, *shape)}",
                ), None
        for name, tensor in zip(cls.OUTPUTS, outs, strict=True):
            if name not in state:
                failure = ("ResolventMissing", "resolvent", f"{where}: no {name!r} in resolvent")
                return failure, None
            ref = state[name]
            if tuple(ref.shape) != tuple(tensor.shape):
                return (
                    "ResolventShape",
                    "resolvent",
                    f"{where}: resolvent[{name!r}] is {tuple(ref.shape)}, forward gave "
                    f"{tuple(tensor.shape)}",
                ), None
            finite = (
                torch.nan_to_num(ref.abs(), nan=0.0, posinf=0.0).max().item() if ref.numel() else 0
            )
            if not torch.allclose(
                tensor, ref, rtol=1e-6, atol=1e-6 * max(1.0, finite), equal_nan=True
            ):
                worst = (tensor - ref).abs().nan_to_num(nan=math.inf).max().item()
                return (
                    "Disagree",
                    "forward/resolvent",
                    f"{where}: forward's {name!r} differs from resolvent's by up to {worst:g}",
                ), None
        return None, state


def _shapes(cls) -> dict[str, tuple[int, ...]]:
    """Every space's shape: ``SPACES``, or for a machine with sizes known at call time
    (``[3, "H", "W"]``) its ``shapes()``, at the sizes of its example inputs."""
    return cls.shapes() if hasattr(cls, "shapes") else cls.SPACES


def _small_sizes(structure) -> dict[str, int] | None:
    """Sizes for the symbols of a machine with sizes known at call time other than its
    example sizes: the smallest it takes (``structure.sizes``) and up, a different one for
    each symbol where it can (so that no axis can stand in for another), where every
    relation holds; None for a machine without symbols or if none is found nearby."""
    least = structure.sizes or {}
    if not structure.example_sizes or set(least) != set(structure.example_sizes):
        return None
    for step in range(64):
        sizes = {name: n + step + k for k, (name, n) in enumerate(least.items())}
        if len(set(sizes.values())) < len(sizes) and step < 32:
            continue  # distinct sizes first
        if all(r.holds(sizes) for r in structure.relations):
            return sizes
    return None


def _improper(error) -> tuple[str, str] | None:
    """Why the diagnostics of ``error`` are not proper ones, as (frame, explanation), or None."""
    from machc.diagnostics import Code

    if not error.errors:
        return ("no-error", "a CompileError without any error in it")
    for d in error.errors:
        span = d.span
        if span is None:
            if d.code is Code.PARAMETER:  # a --set value has no place in the file
                continue
            return (f"{d.code.value}:no-place", f"error {d.code.value} has no place: {d.message}")
        text = error.sources.get(span.file)
        if text is None:
            return (f"{d.code.value}:no-source", f"error {d.code.value} names {span.file!r}")
        lines = text.split("\n")
        if not (1 <= span.line <= len(lines)) or span.column < 1:
            return (
                f"{d.code.value}:outside",
                f"error {d.code.value} at {span.line}:{span.column}, outside the file "
                f"({len(lines)} lines)",
            )
        if span.column > len(lines[span.line - 1]) + 2:
            return (
                f"{d.code.value}:column",
                f"error {d.code.value} at column {span.column} of a line of "
                f"{len(lines[span.line - 1])} characters",
            )
        if not d.render(error.sources).startswith(f"{span}: error: "):
            return (f"{d.code.value}:render", f"error {d.code.value} renders without its place")
        rendered = d.render(error.sources).split("\n")
        line = lines[span.line - 1].removesuffix("\r")
        shown = rendered[1][4:] if len(rendered) > 1 and rendered[1].startswith("    ") else None
        core = shown.removeprefix("...").removesuffix("...") if shown is not None else None
        if (core is None and line.strip()) or (core is not None and core not in line):
            return (
                "render:wrong-line",
                f"error {d.code.value} is at line {span.line}, {line[:60]!r}, but the rendering "
                f"shows {shown[:60] if shown is not None else None!r} under the message",
            )
    return None


def _at_example(shape, structure) -> tuple[int, ...]:
    """A shape with its sizes known at call time (``H // 2``) at the example sizes."""
    sizes = structure.example_sizes
    return tuple(n if isinstance(n, int) else n.value(sizes) for n in shape)


def _too_large(program) -> str | None:
    """A space or intermediate shape with a size of 2^31 or more (sizes known at call
    time: at the example sizes), if any, said in words."""
    for checked in program.machines:
        structure = checked.structure
        for space in checked.machine.spaces:
            shape = _at_example(space.shape, structure)
            if any(n >= TOO_LARGE for n in shape) or (space.ids or 0) >= TOO_LARGE:
                return f"{checked.machine.name}: space {space.name!r} has shape {space.shape}"
        for edge, shapes in structure.shapes.items():
            for shape in shapes:
                if any(n >= TOO_LARGE for n in _at_example(shape, structure)):
                    return f"{checked.machine.name}: edge {edge!r} makes a shape {shape}"
    return None


def _worth_running(program, source: str) -> bool:
    """Whether the module is small enough to run here, and imports only safe classes."""
    from machc.info import program_info

    for path in re.findall(r"runtime\.external\(\s*(\"[^\"]*\"|'[^']*')", source):
        if not SAFE_MODULES.fullmatch(path[1:-1]):
            return False
    if sum(len(c.machine.edges) for c in program.machines) > RUN_EDGES:
        return False
    for info in program_info(program):
        if info.total_params > RUN_ELEMENTS or info.total_macs > RUN_MACS:
            return False
    for checked in program.machines:
        structure = checked.structure
        for shapes in structure.shapes.values():
            for shape in shapes:
                if math.prod(_at_example(shape, structure)) * BATCH * STEPS > RUN_ELEMENTS:
                    return False
        for space in checked.machine.spaces:
            if math.prod(_at_example(space.shape, structure)) * BATCH * STEPS > RUN_ELEMENTS:
                return False
    return True


def _user_module_refused(exc: BaseException) -> bool:
    """A class of module(...) that did not accept its arguments or returned another shape:
    the user's mistake, reported by the runtime at run time as documented."""
    text = str(exc)
    return type(exc).__name__ == "MachineShapeError" or (
        isinstance(exc, TypeError) and ": module(" in text and "constructing" in text
    )


# --- the process ---------------------------------------------------------------------


def _limit_memory(megabytes: int) -> None:
    """Allow ``megabytes`` of address space beyond what the process holds now."""
    size = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            size = int(line.split()[1]) * KB
    limit = size + megabytes * KB * KB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.worker")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--hang-seconds", type=float, default=HANG_SECONDS)
    parser.add_argument("--memory-mb", type=int, default=2048)
    args = parser.parse_args()
    # Replies go to the real standard output; anything else printed goes to standard error.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    checker = Checker(run=not args.no_run, hang_seconds=args.hang_seconds)
    _limit_memory(args.memory_mb)
    replies.write(json.dumps({"ready": True}) + "\n")
    try:
        for line in sys.stdin:
            request = json.loads(line)
            data = base64.b64decode(request["data"])

            def on_run() -> None:
                replies.write(json.dumps({"phase": "run"}) + "\n")

            result = checker.classify(data, request.get("params") or {}, on_run)
            replies.write(json.dumps(result.to_json()) + "\n")
    finally:
        checker.close()


if __name__ == "__main__":
    main()
