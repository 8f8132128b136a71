"""A handle on one worker process: send it an input, get its :class:`Result` back in time.

The worker interrupts itself at the time limit; the handle is the backstop.
A worker that does not answer in time (stuck in C code, or in generated
code) is killed and the input counts as a hang (while checking or
compiling) or a miscompile (while running the module); one that dies is
restarted, and the input counts as an internal error or a miscompile, by
the same rule.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from .outcomes import HANG_SECONDS, Outcome, Result

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 180  # importing torch on a busy machine
RUN_SECONDS = 60  # running a generated module on tiny inputs


class Worker:
    def __init__(self, run: bool = True, hang_seconds: float = HANG_SECONDS, memory_mb: int = 2048):
        self.run = run
        self.hang_seconds = hang_seconds
        self.memory_mb = memory_mb
        self.process: subprocess.Popen | None = None
        self._buffer = b""

    def _start(self) -> None:
        command = [sys.executable, "-m", "tests.fuzz.worker"]
        command += ["--hang-seconds", str(self.hang_seconds), "--memory-mb", str(self.memory_mb)]
        if not self.run:
            command.append("--no-run")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            MACHC_VERIFY_IR="1",  # every IR record is validated too (compiler/record.py)
        )
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self._buffer = b""
        reply = self._read(time.monotonic() + START_SECONDS)
        if not reply or not reply.get("ready"):
            self.close()
            raise RuntimeError("the fuzz worker did not start (python -m tests.fuzz.worker)")

    def _read(self, deadline: float) -> dict | None:
        """The next reply, or None at the deadline or when the worker has gone."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def classify(self, data: bytes, params: dict[str, str]) -> Result:
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        request = {"data": base64.b64encode(data).decode(), "params": params}
        started = time.monotonic()
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            self.close()
            return self.classify(data, params)
        limit = self.hang_seconds * max(1.0, len(data) / (10 * 1024))
        deadline = started + 4 * limit + 10  # wall time: the worker's limit is CPU time
        running = False
        while True:
            reply = self._read(deadline)
            if reply is None:
                return self._lost(running, time.monotonic() - started, limit)
            if reply.get("phase") == "run":
                running = True
                deadline = time.monotonic() + RUN_SECONDS
                continue
            result = Result.from_json(reply)
            if result.outcome in (Outcome.HANG, Outcome.BLOW_UP) or result.kind == "MemoryError":
                self.close()  # start afresh: memory may be fragmented, state half-changed
            return result

    def _lost(self, running: bool, seconds: float, limit: float) -> Result:
        """The worker did not answer: it was stuck, or it died."""
        assert self.process is not None
        code = self.process.poll()
        self.close()
        if code is None:  # stuck: killed
            if running:
                return Result(
                    Outcome.MISCOMPILE,
                    "RunTimeout",
                    "generated",
                    f"running the generated module took more than {RUN_SECONDS} s",
                    seconds,
                )
            return Result(
                Outcome.HANG,
                "Hang",
                "-",
                f"no answer in {seconds:.1f} s (limit {limit:g} s): stuck where the alarm "
                "could not interrupt it",
                seconds,
            )
        what = f"the worker died (exit status {code}) while "
        if running:
            return Result(Outcome.MISCOMPILE, "Crash", "generated", what + "running the module")
        return Result(Outcome.INTERNAL_ERROR, "Crash", "-", what + "checking or compiling")

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
        self.process = None
