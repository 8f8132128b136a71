"""Start-up time of the ``machc`` command on small files: fresh processes, median of N runs.

Each command runs N times, the commands taking turns so that a change in the machine's
load falls on all of them alike. Wall time is from just before the process starts to
the moment it is reaped; CPU time is the process's own user + system time (``os.wait4``),
which another process on the same cores disturbs less. ``--cold`` gives every run an
empty cache directory (``XDG_CACHE_HOME``), so the parser is built each time as it was
before the parser cache; by default the cache is warmed once first.

    .venv/bin/python benchmarks/startup.py            # check and compile, dense and resnet
    .venv/bin/python benchmarks/startup.py --cold -n 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("examples/dense.mach", "examples/resnet.mach")


def commands(out: str) -> list[tuple[str, list[str]]]:
    machc = [sys.executable, "-m", "machc"]
    runs = [(f"check {Path(f).name}", [*machc, "check", f]) for f in FILES]
    runs += [(f"compile {Path(f).name}", [*machc, "compile", f, "-o", out]) for f in FILES]
    return runs


def run_once(argv: list[str], cache: str) -> tuple[float, float]:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed (status {status})")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs of each command (default 10)")
    parser.add_argument("--cold", action="store_true", help="an empty parser cache every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs = commands(os.path.join(scratch, "out.py"))
        warm = os.path.join(scratch, "cache")
        run_once(runs[0][1], warm)  # fills the warm cache
        times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in runs}
        for _ in range(args.n):
            for label, argv in runs:
                cache = tempfile.mkdtemp(dir=scratch) if args.cold else warm
                times[label].append(run_once(argv, cache))
    print(f"{'command':22} {'wall ms':>8} {'min':>5} {'cpu ms':>7} {'min':>5}   (n={args.n})")
    for label, pairs in times.items():
        wall, cpu = [1e3 * w for w, _ in pairs], [1e3 * c for _, c in pairs]
        print(
            f"{label:22} {statistics.median(wall):8.0f} {min(wall):5.0f} "
            f"{statistics.median(cpu):7.0f} {min(cpu):5.0f}"
        )


if __name__ == "__main__":
    main()
