"""Fuzzing runs: draw inputs, classify them in workers, group and minimise the failures.

A run draws inputs ``0 .. n-1`` of a seed (:func:`tests.fuzz.inputs.generate`)
and hands them to ``jobs`` workers (:mod:`tests.fuzz.pool`). Failures are
grouped by :attr:`Result.key`; each group keeps its smallest input, which is
then minimised (:mod:`tests.fuzz.minimise`) and written to the output
folder as ``<outcome>-<k>.mach`` (the exact bytes) and ``<outcome>-<k>.txt``
(what went wrong, with the traceback of the minimised input), ``k`` counting
from the most frequent failure of that outcome. ``summary.json`` and
``table.md`` hold the counts.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .inputs import FAMILIES, Case, generate
from .minimise import minimise
from .outcomes import HANG_SECONDS, Outcome, Result
from .pool import ROOT, Worker


@dataclass
class Failure:
    """One distinct failure: every input that failed with one key."""

    first: Result
    case: Case  # the smallest input that failed this way
    count: int = 0
    families: Counter = field(default_factory=Counter)
    minimised: bytes | None = None
    final: Result | None = None  # the result of the minimised input
    runs: int = 0  # worker runs spent minimising
    files: tuple[str, str] = ("", "")


@dataclass
class Report:
    seed: int
    requested: int
    done: int = 0
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)  # outcome -> inputs
    ran: int = 0  # ok-module inputs whose module was run
    by_family: dict[str, Counter] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], Failure] = field(default_factory=dict)
    slowest: tuple[float, str] = (0.0, "")

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.counts.items() if Outcome(outcome).failure)

    def record(self, case: Case, result: Result) -> None:
        self.done += 1
        self.counts[result.outcome.value] += 1
        self.ran += result.ran
        self.by_family.setdefault(case.family, Counter())[result.outcome.value] += 1
        if result.seconds > self.slowest[0] and not result.outcome.failure:
            self.slowest = (result.seconds, case.name)
        if not result.outcome.failure:
            return
        failure = self.failures.setdefault(result.key, Failure(result, case))
        failure.count += 1
        failure.families[case.family] += 1
        if len(case.data) < len(failure.case.data):
            failure.case = case

    def ordered(self) -> list[Failure]:
        """Failures, the most frequent first."""
        return sorted(self.failures.values(), key=lambda f: (-f.count, f.first.key))


def fuzz(
    n: int,
    seed: int,
    out: Path | None,
    jobs: int = 1,
    time_limit: float | None = None,
    hang_seconds: float = HANG_SECONDS,
    memory_mb: int = 2048,
    run_modules: bool = True,
    minimise_seconds: float = 60.0,
    progress: Callable[[str], None] | None = print,
    families: tuple[str, ...] = (),
    start_index: int = 0,
) -> Report:
    """Fuzz ``n`` inputs (or fewer, at ``time_limit`` seconds) and write what failed to ``out``;
    ``start_index``: draw inputs ``start_index`` to ``n - 1`` of the seed only (the rest of a
    run that stopped at its time limit)."""
    report = Report(seed=seed, requested=n - start_index)
    lock = threading.Lock()
    counter = iter(range(start_index, n))
    start = time.monotonic()
    stop_at = start + time_limit if time_limit else None
    last_print = [start]

    def work() -> None:
        worker = Worker(run=run_modules, hang_seconds=hang_seconds, memory_mb=memory_mb)
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None or (stop_at and time.monotonic() > stop_at):
                    return
                case = generate(seed, index, families)
                result = worker.classify(case.data, case.params)
                with lock:
                    report.record(case, result)
                    now = time.monotonic()
                    if progress and now - last_print[0] > 10:
                        last_print[0] = now
                        progress(_progress_line(report, now - start))
        finally:
            worker.close()

    _in_threads(work, jobs)
    report.seconds = time.monotonic() - start
    if progress:
        progress(_progress_line(report, report.seconds))
    if out is not None:  # the inputs as found, in case minimising is cut short
        write(report, out)
    if minimise_seconds > 0 and report.failures:
        _minimise_all(
            report, jobs, hang_seconds, memory_mb, run_modules, minimise_seconds, progress
        )
        if out is not None:
            write(report, out)
    return report


def _in_threads(work: Callable[[], None], jobs: int) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(max(1, jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _progress_line(report: Report, seconds: float) -> str:
    rate = report.done / seconds if seconds else 0.0
    parts = [f"{outcome.value} {report.counts[outcome.value]}" for outcome in Outcome]
    return (
        f"[{report.done}/{report.requested}] {seconds:.0f} s, {rate:.1f}/s: "
        + ", ".join(parts)
        + f"; {len(report.failures)} distinct failures"
    )


def _minimise_all(report, jobs, hang_seconds, memory_mb, run_modules, seconds, progress) -> None:
    queue = list(report.ordered())
    lock = threading.Lock()

    def work() -> None:
        worker = Worker(run=run_modules, hang_seconds=hang_seconds, memory_mb=memory_mb)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    failure = queue.pop(0)
                minimise_failure(failure, worker, seconds)
                if progress:
                    progress(
                        f"minimised {failure.first.outcome.value} {failure.first.kind} "
                        f"({failure.first.frame}): {len(failure.case.data)} -> "
                        f"{len(failure.minimised or b'')} bytes in {failure.runs} runs"
                    )
        finally:
            worker.close()

    _in_threads(work, jobs)


def minimise_failure(failure: Failure, worker: Worker, seconds: float) -> None:
    """Minimise a failure's smallest input while it fails the same way."""
    params = failure.case.params
    target = worker.classify(failure.case.data, params)
    if not target.same_failure(failure.first):  # flaky (a hang near the limit): keep as is
        failure.minimised, failure.final, failure.runs = failure.case.data, target, 1
        return

    def fails(data: bytes) -> bool:
        return target.same_failure(worker.classify(data, params))

    data, runs = minimise(failure.case.data, fails, seconds=seconds)
    failure.minimised, failure.runs = data, runs + 1
    failure.final = worker.classify(data, params)


# --- writing the report ----------------------------------------------------------------


def write(report: Report, out: Path) -> None:
    """Reproducers, ``summary.json`` and ``table.md`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        if old.suffix in (".mach", ".txt") and old.stem.rsplit("-", 1)[0] in _SLUGS:
            old.unlink()
    numbers: Counter = Counter()
    for failure in report.ordered():
        outcome = failure.first.outcome
        numbers[outcome] += 1
        stem = f"{outcome.slug}-{numbers[outcome]}"
        data = failure.minimised if failure.minimised is not None else failure.case.data
        (out / f"{stem}.mach").write_bytes(data)
        (out / f"{stem}.txt").write_text(explain(failure, stem), encoding="utf-8")
        failure.files = (f"{stem}.mach", f"{stem}.txt")
    (out / "summary.json").write_text(json.dumps(summary(report), indent=2) + "\n")
    (out / "table.md").write_text(table(report) + "\n", encoding="utf-8")


_SLUGS = {outcome.slug for outcome in Outcome if outcome.failure}


def explain(failure: Failure, stem: str) -> str:
    result = failure.final if failure.final is not None else failure.first
    data = failure.minimised if failure.minimised is not None else failure.case.data
    families = ", ".join(f"{name} {n}" for name, n in failure.families.most_common())
    set_args = " ".join(f"--set '{k}={v}'" for k, v in failure.case.params.items())
    lines = [
        f"{failure.first.outcome.value}: {failure.first.kind} at {failure.first.frame}",
        f"inputs that failed this way: {failure.count} ({families})",
        f"smallest of them: input {failure.case.name} ({failure.case.family}"
        + (f", {failure.case.origin}" if failure.case.origin else "")
        + f"), {len(failure.case.data)} bytes; minimised to {len(data)} bytes "
        f"in {failure.runs} runs",
        f"--set: {json.dumps(failure.case.params, ensure_ascii=False)}",
        f"reproduce: python -m tests.fuzz --replay {stem}.mach {set_args}".rstrip(),
        f"redraw the original: python -m tests.fuzz --show {failure.case.name}",
        "",
        "the minimised input:",
        data.decode("utf-8", errors="backslashreplace"),
        "",
        f"what happened ({result.outcome.value}: {result.kind} at {result.frame}):",
        result.detail,
    ]
    return "\n".join(lines) + "\n"


def summary(report: Report) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "seed": report.seed,
        "requested": report.requested,
        "inputs": report.done,
        "seconds": round(report.seconds, 1),
        "outcomes": {outcome.value: report.counts[outcome.value] for outcome in Outcome},
        "modules_run": report.ran,
        "by_family": {f: dict(report.by_family.get(f, {})) for f in FAMILIES},
        "failures": [
            {
                "outcome": f.first.outcome.value,
                "kind": f.first.kind,
                "frame": f.first.frame,
                "count": f.count,
                "input": f.case.name,
                "family": f.case.family,
                "params": f.case.params,
                "files": list(f.files),
                "minimised_bytes": len(f.minimised) if f.minimised is not None else None,
            }
            for f in report.ordered()
        ],
    }


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "compiler", "runtime", "grammar"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + (" (with uncommitted changes to the compiler)" if dirty else "")


def table(report: Report) -> str:
    """The outcome table (Markdown), and the outcomes of each generator family."""
    total = max(report.done, 1)
    rows = ["| outcome | inputs | share |", "| --- | ---: | ---: |"]
    for outcome in Outcome:
        n = report.counts[outcome.value]
        note = f" ({report.ran:,} run)" if outcome is Outcome.OK_MODULE else ""
        rows.append(f"| {outcome.value} | {n:,}{note} | {100 * n / total:.2f}% |")
    rows.append(f"| **total** | **{report.done:,}** | |")
    head = "| family | " + " | ".join(o.value for o in Outcome) + " |"
    family_rows = [head, "| --- |" + " ---: |" * len(Outcome)]
    for family in FAMILIES:
        counts = report.by_family.get(family, Counter())
        cells = " | ".join(f"{counts[o.value]:,}" for o in Outcome)
        family_rows.append(f"| {family} | {cells} |")
    return "\n".join(rows) + "\n\n" + "\n".join(family_rows)
