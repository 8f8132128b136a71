"""Benchmark: how machc's check and compile times and memory grow with the size of a machine.

Each measurement is one fresh CLI process, as a user would run it: ``python -m
machc check FILE.mach`` (its structure report written to a file) and ``python -m
machc compile FILE.mach -o OUT.py``, each timed with ``time.perf_counter`` from
just before the process starts to the moment it is reaped, so the times include
the interpreter's start and machc's imports (the ``baseline`` row: a one-edge
machine, the same two commands, the fastest of three runs). Three families of
generated machines, vectors of width 4, each written the way a user would (with
``for`` loops):

- ``chain``: ``first : x -> h[1]``, ``e[i] : h[i-1] -> h[i]`` for i in 2..n,
  ``last : h[n] -> y`` (all ``linear``): n + 1 edges, depth n + 1;
- ``dense``: ``g[i] : x × h[1..i-1] -> h[i] = linear | relu`` for i in 1..n and
  ``head : h[n] -> y = linear``: n + 1 edges naming about n²/2 spaces (machc
  refuses machines whose edges name more than 2,500,000 spaces in all, so
  n = 2,234 is the largest it takes);
- ``wide``: ``e[i] : x -> y = linear`` for i in 1..n: n edges of one level, all
  writing ``y``. For this family a third process also imports the generated
  module (with torch), builds it and runs ``forward`` once on a ``[2, 4]``
  input, checking the output's shape; its steps are timed inside that process.

Peak memory is the peak resident set size (``ru_maxrss``) of each process by
itself, read from ``os.wait4`` when the process is reaped. (``getrusage(
RUSAGE_CHILDREN)`` is not used: its ``ru_maxrss`` is the largest of all children
reaped so far, so after a large process every smaller one would read as 0.)
1 MB = 10^6 bytes. The table gives, per machine, the seconds of ``check`` and of
``compile``, the peak of the compile process ("peak MB"), the size of the
generated module, and the peak of the check process. The growth exponent of
each family is the least-squares slope of log(seconds) against log(n) over its
sizes, once on the raw times and once on the times above the baseline's (the
part that depends on n).

A process that runs past ``--timeout`` is killed and reported as a timeout; one
that fails (the compiler refuses the machine, or crashes) is reported with the
last line it wrote to standard error. Neither stops the run. Generated files go
to a temporary directory that is removed at the end. Timings are printed, never
asserted.

Run from anywhere: ``.venv/bin/python benchmarks/compile_scale.py [--families
chain dense --timeout 600 --json out.json]``; ``--quick`` is a tiny smoke
configuration; ``--sizes dense=1400`` measures other sizes; ``--loop-limit 200000``
runs machc with a higher limit on loop iterations (E005, 100,000), for machines beyond
it (``--sizes chain=200000``): the same program, started with ``python -c`` instead of
``python -m machc``. Every family's ``for`` loop is kept as a loop in the generated
module (docs/language.md, "Loops in generated code"), so its file stays a few
kilobytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FAMILIES = ("chain", "dense", "wide")
DEFAULT_SIZES = {
    "chain": [1_000, 10_000, 100_000],  # h[1..100000]: the longest array (E005)
    "dense": [250, 500, 1_000, 2_000],
    "wide": [1_000, 10_000, 100_000],
}
QUICK_SIZES = {"chain": [50, 100], "dense": [10, 20], "wide": [50, 100]}
DEFAULT_TIMEOUT = 600.0
MB = 1e6


def source(family: str, n: int) -> str:
    """The .mach text of one machine of a family, written as a user would write it."""
    if family == "chain":
        return (
            f"# A chain of {n + 1} linear edges\n"
            "machine Chain {\n"
            "    input  x : 4\n"
            f"    space  h[1..{n}] : 4\n"
            "    output y : 4\n\n"
            "    first : x -> h[1] = linear\n"
            f"    for i in 2..{n} {{\n"
            "        e[i] : h[i-1] -> h[i] = linear\n"
            "    }\n"
            f"    last : h[{n}] -> y = linear\n"
            "}\n"
        )
    if family == "dense":
        return (
            f"# A dense machine of {n} blocks: every block reads the input and all earlier ones\n"
            "machine Dense {\n"
            "    input  x : 4\n"
            f"    space  h[1..{n}] : 4\n"
            "    output y : 4\n\n"
            f"    for i in 1..{n} {{\n"
            "        g[i] : x × h[1..i-1] -> h[i] = linear | relu\n"
            "    }\n"
            f"    head : h[{n}] -> y = linear\n"
            "}\n"
        )
    if family == "wide":
        return (
            f"# {n} linear edges side by side, all writing y\n"
            "machine Wide {\n"
            "    input  x : 4\n"
            "    output y : 4\n\n"
            f"    for i in 1..{n} {{\n"
            "        e[i] : x -> y = linear\n"
            "    }\n"
            "}\n"
        )
    if family == "baseline":
        return (
            "machine Baseline {\n    input  x : 4\n    output y : 4\n\n    e : x -> y = linear\n}\n"
        )
    raise ValueError(f"no family {family!r}")


CLASS = {"chain": "Chain", "dense": "Dense", "wide": "Wide", "baseline": "Baseline"}


def edges(family: str, n: int) -> int:
    return {"chain": n + 1, "dense": n + 1, "wide": n, "baseline": 1}[family]


def spaces_named(family: str, n: int) -> int:
    """The count machc limits to 2,500,000: spaces named by the edges, ranges counted out."""
    if family == "dense":
        return n * (n + 1) // 2 + n + 2  # g[i] names x, h[1..i-1] and h[i]; head names 2
    return 2 * edges(family, n)


@dataclass
class Run:
    """One process: how it ended, how long it took, its own peak resident set size."""

    status: str  # "ok", "timeout" or "error"
    seconds: float
    peak_mb: float | None
    returncode: int | None
    message: str  # the last line of standard error when it failed


def peak_bytes(usage) -> int:
    """ru_maxrss in bytes (Linux gives KiB, macOS bytes)."""
    return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


def run_process(argv: list[str], timeout: float, stdout: Path, cwd: Path) -> Run:
    """Runs one process to its end or to ``timeout`` seconds, and measures it.

    The process is reaped with ``os.wait4`` in a thread, so the end time is taken
    as soon as it exits and the rusage is this process's alone; the main thread
    waits for that thread with the timeout and kills the process if it overruns.
    """
    with open(stdout, "wb") as out, tempfile.TemporaryFile() as err:
        reaped: dict[str, object] = {}
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd)

        def reap() -> None:
            _, status, usage = os.wait4(process.pid, 0)
            reaped["end"] = time.perf_counter()
            reaped["status"] = status
            reaped["usage"] = usage

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            try:  # not process.kill(): its poll() could reap the process under the thread
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass
            waiter.join()
        returncode = os.waitstatus_to_exitcode(reaped["status"])
        process.returncode = returncode  # already reaped: Popen must not wait for it again
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    if timed_out:
        return Run("timeout", timeout, None, None, f"killed after {timeout:g} s")
    seconds = reaped["end"] - start
    peak = peak_bytes(reaped["usage"]) / MB
    if returncode != 0:
        message = lines[-1] if lines else f"exit status {returncode}"
        # A diagnostic's first line says what was wrong; the last may be a caret or a hint.
        for line in lines:
            if ": error:" in line or line.startswith("Traceback"):
                message = line
                break
        return Run("error", seconds, peak, returncode, message)
    return Run("ok", seconds, peak, 0, "")


RUN_MODULE = """
import importlib.util, json, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads(1)
imported_torch = time.perf_counter()
spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
imported = time.perf_counter()
model = getattr(module, sys.argv[2])()
built = time.perf_counter()
with torch.no_grad():
    y = model(torch.randn(2, 4))
ran = time.perf_counter()
assert tuple(y.shape) == (2, 4), y.shape
assert bool(torch.isfinite(y).all())
print(json.dumps({
    "torch_import_s": imported_torch - start,
    "module_import_s": imported - imported_torch,
    "build_s": built - imported,
    "forward_s": ran - built,
    "parameters": sum(p.numel() for p in model.parameters()),
}))
"""


# ``python -m machc`` with machc's limit on the loop iterations of a machine set to the
# first argument: the same program, for machines beyond the limit (--loop-limit)
LIMITED_MACHC = (
    "import sys; import machc.expand; machc.expand.MAX_EXPANSION = int(sys.argv.pop(1)); "
    "from machc.cli import main; sys.argv[0] = 'machc'; sys.exit(main())"
)


def machc_command(loop_limit: int | None) -> list[str]:
    """How to run machc: ``python -m machc``, or with another loop limit."""
    if loop_limit is None:
        return [sys.executable, "-m", "machc"]
    return [sys.executable, "-c", LIMITED_MACHC, str(loop_limit)]


def measure(
    family: str,
    n: int,
    workdir: Path,
    timeout: float,
    run_module: bool,
    loop_limit: int | None = None,
) -> dict:
    """Writes one machine, then checks it, compiles it (and runs it) in separate processes."""
    name = f"{family}_{n}"
    mach = workdir / f"{name}.mach"
    mach.write_text(source(family, n), encoding="utf-8")
    out = workdir / f"{name}.py"
    python = sys.executable
    machc = machc_command(loop_limit)
    check = run_process(
        [*machc, "check", str(mach)], timeout, workdir / f"{name}.check.txt", workdir
    )
    compiled = run_process(
        [*machc, "compile", str(mach), "-o", str(out)],
        timeout,
        workdir / f"{name}.compile.txt",
        workdir,
    )
    figures: dict[str, object] = {
        "family": family,
        "n": n,
        "edges": edges(family, n),
        "spaces_named": spaces_named(family, n),
        "source_bytes": mach.stat().st_size,
        "check": asdict(check),
        "compile": asdict(compiled),
        "file_mb": out.stat().st_size / MB if compiled.status == "ok" else None,
    }
    if run_module:
        if compiled.status != "ok":
            figures["run"] = {"status": "skipped", "message": f"the compile: {compiled.status}"}
        else:
            report = workdir / f"{name}.run.json"
            ran = run_process(
                [python, "-c", RUN_MODULE, str(out), CLASS[family]], timeout, report, workdir
            )
            figures["run"] = asdict(ran)
            if ran.status == "ok":
                figures["run"].update(json.loads(report.read_text()))
    out.unlink(missing_ok=True)  # the largest files go as soon as they are measured
    return figures


BASELINE_RUNS = 3


def measure_baseline(workdir: Path, timeout: float, loop_limit: int | None = None) -> dict:
    """The one-edge machine, measured BASELINE_RUNS times: each step's fastest run is kept.

    It is the fixed cost of a process (the interpreter, machc's imports), subtracted
    from the other times for the exponents "above the baseline", so it is taken as
    its least noisy estimate.
    """
    runs = [
        measure("baseline", 1, workdir, timeout, False, loop_limit) for _ in range(BASELINE_RUNS)
    ]
    best = dict(runs[0])
    for step in ("check", "compile"):
        done = [r[step] for r in runs if r[step]["status"] == "ok"]
        best[step] = min(done, key=lambda run: run["seconds"]) if done else runs[0][step]
        best[f"{step}_seconds_all"] = [r[step]["seconds"] for r in runs]
    return best


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two usable points."""
    logs = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(logs) < 2 or len({lx for lx, _ in logs}) < 2:
        return None
    mx = sum(lx for lx, _ in logs) / len(logs)
    my = sum(ly for _, ly in logs) / len(logs)
    return sum((lx - mx) * (ly - my) for lx, ly in logs) / sum((lx - mx) ** 2 for lx, _ in logs)


def exponents(rows: list[dict], baseline: dict) -> dict[str, float | None]:
    """Growth exponents of one family's check and compile times, raw and above the baseline."""
    fits: dict[str, float | None] = {}
    for step in ("check", "compile"):
        done = [(r["n"], r[step]["seconds"]) for r in rows if r[step]["status"] == "ok"]
        fits[step] = slope(done)
        floor = baseline[step]["seconds"] if baseline[step]["status"] == "ok" else 0.0
        fits[f"{step}_above_baseline"] = slope([(n, s - floor) for n, s in done])
    return fits


def seconds_cell(run: dict) -> str:
    if run["status"] == "ok":
        return f"{run['seconds']:.2f}"
    if run["status"] == "timeout":
        return f"> {run['seconds']:g} (timeout)"
    return f"error after {run['seconds']:.2f}"


def mb_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def power(exponent: float | None) -> str:
    return "n/a" if exponent is None else f"n^{exponent:.2f}"


def label(row: dict) -> str:
    return "baseline (1 edge)" if row["family"] == "baseline" else f"{row['family']} {row['n']:,}"


def print_table(rows: list[dict]) -> None:
    print("| machine | edges | check s | compile s | peak MB | file MB | check peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {label(row)} | {row['edges']:,} | {seconds_cell(row['check'])} | "
            f"{seconds_cell(row['compile'])} | {mb_cell(row['compile']['peak_mb'])} | "
            f"{mb_cell(row['file_mb'])} | {mb_cell(row['check']['peak_mb'])} |"
        )
    for row in rows:
        for step in ("check", "compile"):
            if row[step]["status"] != "ok":
                print(f"{label(row)}, {step}: {row[step]['status']}: {row[step]['message']}")


def print_runs(rows: list[dict]) -> None:
    runs = [row for row in rows if "run" in row]
    if not runs:
        return
    print()
    print("generated module imported, built and run once on a [2, 4] input (one process):")
    print(
        "| machine | import torch s | import module s | build s | forward ms "
        "| process s | peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in runs:
        run = row["run"]
        if run["status"] != "ok":
            print(f"| {label(row)} | {run['status']}: {run['message']} | | | | | |")
            continue
        print(
            f"| {label(row)} | {run['torch_import_s']:.2f} | {run['module_import_s']:.2f} | "
            f"{run['build_s']:.2f} | {run['forward_s'] * 1e3:.1f} | {run['seconds']:.2f} | "
            f"{mb_cell(run['peak_mb'])} |"
        )


def parse_sizes(text: str) -> tuple[str, list[int]]:
    family, _, sizes = text.partition("=")
    if family not in FAMILIES or not sizes:
        raise argparse.ArgumentTypeError(f"expected FAMILY=N[,N...] with FAMILY in {FAMILIES}")
    try:
        values = [int(s.replace("_", "")) for s in sizes.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers: {sizes!r}") from None
    if min(values) < 2:
        raise argparse.ArgumentTypeError("sizes must be at least 2")
    return family, values


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (for tests): chain 50/100, dense 10/20, wide 50/100",
    )
    parser.add_argument(
        "--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="families to run"
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        action="append",
        default=[],
        metavar="FAMILY=N[,N...]",
        help="sizes of one family instead of its defaults (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per process before it is killed (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    parser.add_argument(
        "--loop-limit",
        type=int,
        default=None,
        metavar="N",
        help="run machc with its limit on the loop iterations of a machine (E005, 100,000) "
        "set to N, to measure larger machines (a chain of 200,000: N = 200000)",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.loop_limit is not None and args.loop_limit < 1:
        parser.error("--loop-limit must be positive")
    sizes = dict(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    sizes.update(args.sizes)
    args.size_lists = {family: sizes[family] for family in args.families}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = ", ".join(f"{f} {'/'.join(f'{n:,}' for n in ns)}" for f, ns in args.size_lists.items())
    limit = "" if args.loop_limit is None else f"; loop limit {args.loop_limit:,}"
    print(
        f"compile scale: {plan}; one process per measurement, timeout {args.timeout:g} s{limit}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    report: dict[str, object] = {
        "benchmark": "compile_scale",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "timeout_s": args.timeout,
        "loop_limit": args.loop_limit,
        "sizes": args.size_lists,
        "rows": [],
        "exponents": {},
    }
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="machc-scale-") as tmp:
        workdir = Path(tmp)
        baseline = measure_baseline(workdir, args.timeout, args.loop_limit)
        rows.append(baseline)
        for family, sizes in args.size_lists.items():
            for n in sizes:
                row = measure(family, n, workdir, args.timeout, family == "wide", args.loop_limit)
                rows.append(row)
                print(
                    f"  {label(row)}: check {seconds_cell(row['check'])} s, "
                    f"compile {seconds_cell(row['compile'])} s",
                    flush=True,
                )
    print()
    print_table(rows)
    print_runs(rows)
    print()
    baseline_s = ", ".join(
        f"{step} {seconds_cell(baseline[step])} s" for step in ("check", "compile")
    )
    print(f"growth exponents (least squares of log time against log n; baseline: {baseline_s}):")
    for family in args.size_lists:
        fits = exponents([r for r in rows if r["family"] == family], baseline)
        report["exponents"][family] = fits
        print(
            f"{family}: time ~ {power(fits['check'])} (check), {power(fits['compile'])} (compile); "
            f"above the baseline: {power(fits['check_above_baseline'])} (check), "
            f"{power(fits['compile_above_baseline'])} (compile)"
        )
    report["rows"] = rows
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [
        r
        for r in rows
        if any(r[s]["status"] == "error" for s in ("check", "compile"))
        or r.get("run", {}).get("status") == "error"
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
