"""A campaign: many seeds over a few worker processes, watched by the parent.

The parent hands each idle worker the next seed and waits for its answer with a
watchdog: a worker that does not answer in time is a hang (the Guest is bounded,
so a run that does not end is the Host's or the Launcher's fault), a worker that
dies is a failure, and both are reported with the seed that did it.  Either way
the worker is replaced and the campaign goes on.  Workers are also replaced now
and then, so one run's leaks cannot become another run's failure.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO

from lguest.fuzz.run import HANG, WORKER_DIED, Outcome, Plan
from lguest.fuzz.worker import COMMAND, IN_PROCESS

RUNS_PER_WORKER = 300
PROGRESS_SECONDS = 60


def worker_command(plan: Plan, launcher: list[str] | None) -> list[str]:
    extra = [json.dumps(launcher)] if launcher else []
    return [sys.executable, "-m", "lguest.fuzz.worker", json.dumps(asdict(plan)), *extra]


@dataclass
class Report:
    runs: int = 0
    command_runs: int = 0
    ops: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # (kind, grouped reason) -> runs
    failures: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.runs += 1
        self.command_runs += outcome.via_command
        self.ops += outcome.ops
        self.outcomes[(outcome.kind, outcome.reason)] += 1
        if outcome.failed:
            self.failures.append(outcome)


class Worker:
    def __init__(self, argv: list[str]) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     start_new_session=True)  # its own group: a kill takes its children
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.seed: int | None = None  # the seed it is running
        self.deadline = 0.0
        self.runs = 0

    def send(self, seed: int, how: str, timeout: float) -> None:
        self.seed, self.deadline = seed, time.monotonic() + timeout
        self.runs += 1
        self.stdin.write(f"{seed} {how}\n".encode())
        self.stdin.flush()

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.stdin.close()
        self.stdout.close()
        self.stderr.close()


class Campaign:
    """Runs seeds first_seed, first_seed+1, ... until the time or the run budget is spent."""

    def __init__(self, plan: Plan, workers: int, command_every: int = 50,
                 launcher: list[str] | None = None, worker_argv: list[str] | None = None) -> None:
        self.plan = plan
        self.workers = workers
        self.command_every = command_every
        self.worker_argv = worker_argv or worker_command(plan, launcher)
        # The worker's own run has a timeout for `lguest` subprocesses; ours must be longer.
        self.watchdog = plan.timeout * 1.5 + 5

    def how(self, seed: int) -> str:
        return COMMAND if self.command_every and seed % self.command_every == 0 else IN_PROCESS

    def run(self, first_seed: int, seconds: float | None = None, runs: int | None = None,
            progress: Callable[[Report], None] | None = None) -> Report:
        """`progress`, if given, sees the report so far about once a minute."""
        report = Report()
        started = last_progress = time.monotonic()
        seeds = self._seeds(first_seed, started, seconds, runs)
        pool: list[Worker] = []
        selector = selectors.DefaultSelector()
        try:
            for _ in range(self.workers):
                self._start(seeds, selector, pool)
            while pool:
                for key, _ in selector.select(timeout=0.5):
                    self._answer(key.data, seeds, selector, pool, report)
                for worker in [w for w in pool if time.monotonic() > w.deadline]:
                    report.add(self._failure(worker, HANG, f"no answer within {self.watchdog:.0f} s"))
                    self._retire(worker, selector, pool)
                    self._start(seeds, selector, pool)
                if progress and time.monotonic() - last_progress >= PROGRESS_SECONDS:
                    last_progress = time.monotonic()
                    report.seconds = last_progress - started
                    progress(report)
        finally:
            for worker in pool:
                worker.stop()
        report.seconds = time.monotonic() - started
        return report

    @staticmethod
    def _seeds(first: int, started: float, seconds: float | None, runs: int | None) -> Iterator[int]:
        seed = first
        while runs is None or seed - first < runs:
            if seconds is not None and time.monotonic() - started >= seconds:
                return
            yield seed
            seed += 1

    def _start(self, seeds: Iterator[int], selector: selectors.BaseSelector, pool: list[Worker]) -> None:
        """A fresh worker with the next seed, if there is one."""
        seed = next(seeds, None)
        if seed is None:
            return
        worker = Worker(self.worker_argv)
        pool.append(worker)
        selector.register(worker.stdout, selectors.EVENT_READ, worker)
        worker.send(seed, self.how(seed), self.watchdog)

    def _retire(self, worker: Worker, selector: selectors.BaseSelector, pool: list[Worker]) -> None:
        selector.unregister(worker.stdout)
        worker.stop()
        pool.remove(worker)

    def _failure(self, worker: Worker, kind: str, reason: str) -> Outcome:
        assert worker.seed is not None
        return Outcome(worker.seed, kind, reason, worker.stderr_tail(), 0, self.how(worker.seed) == COMMAND)

    def _answer(self, worker: Worker, seeds: Iterator[int], selector: selectors.BaseSelector,
                pool: list[Worker], report: Report) -> None:
        line = worker.stdout.readline()
        if not line:
            worker.proc.wait()
            report.add(self._failure(worker, WORKER_DIED, f"worker exited {worker.proc.returncode}"))
        else:
            outcome = Outcome(**json.loads(line))
            report.add(outcome)
            if outcome.kind != HANG and worker.runs < RUNS_PER_WORKER:
                seed = next(seeds, None)
                if seed is not None:
                    worker.send(seed, self.how(seed), self.watchdog)
                    return
        self._retire(worker, selector, pool)
        self._start(seeds, selector, pool)
