"""``python -m tests.fuzz``: fuzz machc, replay reproducers, or show one drawn input.

    python -m tests.fuzz --n 100000 --seed 1 --out fuzz-out --jobs 2 [--time-limit 1500]
    python -m tests.fuzz --replay fuzz-out/internal-error-1.mach [--set n=4]
    python -m tests.fuzz --show 1:1234

Exit status: 0 when no input failed, 1 when some did (each distinct failure
is minimised and written to ``--out``), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .inputs import FAMILIES, generate
from .outcomes import HANG_SECONDS, Outcome
from .pool import Worker
from .runner import fuzz, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=1000, help="inputs to draw (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the run (default 0)")
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        metavar="I",
        help="draw inputs I to N-1 only: the rest of a run stopped by --time-limit at I",
    )
    parser.add_argument("--out", type=Path, help="where reproducers and the summary go")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--time-limit", type=float, help="stop drawing inputs after this many seconds"
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=HANG_SECONDS,
        help="CPU seconds after which checking and compiling an input under 10 kB is a hang "
        f"(default {HANG_SECONDS:g})",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=2048, help="memory bound of a worker (default 2048)"
    )
    parser.add_argument("--no-run", action="store_true", help="compile only; run no module")
    parser.add_argument(
        "--minimise-seconds",
        type=float,
        default=60.0,
        help="time to minimise each distinct failure (default 60; 0: do not minimise)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.add_argument(
        "--families",
        default="",
        help=f"draw only from these generators, comma-separated: {', '.join(FAMILIES)}",
    )
    parser.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="classify files")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--show", metavar="SEED:INDEX", help="print one drawn input")
    args = parser.parse_args(argv)
    if args.show:
        seed, _, index = args.show.partition(":")
        case = generate(int(seed), int(index))
        print(f"# {case.family} {case.origin} --set {case.params}", file=sys.stderr)
        sys.stdout.buffer.write(case.data)
        return 0
    if args.replay:
        return _replay(args)
    if not 0 <= args.start <= args.n:
        parser.error("--start must be between 0 and --n")
    families = tuple(f for f in args.families.split(",") if f)
    if set(families) - set(FAMILIES):
        parser.error(f"--families: no such generators {sorted(set(families) - set(FAMILIES))}")
    report = fuzz(
        args.n,
        args.seed,
        args.out,
        jobs=args.jobs,
        time_limit=args.time_limit,
        hang_seconds=args.hang_seconds,
        memory_mb=args.memory_mb,
        run_modules=not args.no_run,
        minimise_seconds=args.minimise_seconds,
        progress=None if args.quiet else print,
        families=families,
        start_index=args.start,
    )
    print()
    print(table(report))
    if report.failures:
        print()
        print(f"{len(report.failures)} distinct failures, the most frequent first:")
        for failure in report.ordered():
            where = f" -> {args.out / failure.files[0]}" if args.out else ""
            print(
                f"  {failure.count:6d}  {failure.first.outcome.value}: {failure.first.kind} "
                f"at {failure.first.frame}{where}"
            )
    return 1 if report.failed else 0


def _replay(args) -> int:
    params = dict(item.split("=", 1) for item in args.set)
    worker = Worker(run=not args.no_run, hang_seconds=args.hang_seconds, memory_mb=args.memory_mb)
    failed = 0
    try:
        for path in args.replay:
            result = worker.classify(path.read_bytes(), params)
            failed += result.outcome.failure
            what = f": {result.kind} at {result.frame}" if result.outcome.failure else ""
            if result.outcome is Outcome.OK_MODULE:
                what = " (run: forward and resolvent agree)" if result.ran else " (not run)"
            print(f"{path}: {result.outcome.value}{what}")
            if result.outcome.failure and result.detail:
                print(result.detail)
    finally:
        worker.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
