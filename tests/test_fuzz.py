"""The fuzzing harness: a short seeded campaign, and proof that it catches each failure kind.

The campaign is the real thing (the fuzz Guest on the real Host, in worker
processes, some runs through the `lguest` command).  The self-tests give the
same Campaign real processes that misbehave on purpose: a worker that raises, a
worker that never answers, an `lguest` that exits 3.
"""

from __future__ import annotations

import sys

from lguest.fuzz.campaign import Campaign
from lguest.fuzz.run import (
    EXIT_STATUS,
    HANG,
    POWER_OFF,
    POWERED_OFF,
    WORKER_DIED,
    Plan,
    run_command,
    run_in_process,
)

FIRST_SEED = 1000  # the CI campaign's seeds: FIRST_SEED .. FIRST_SEED + CI_RUNS - 1
CI_RUNS = 80
CI_OPS = 100  # per boot: short enough that some runs power off, long enough to go deep


def test_the_fuzz_guest_boots_and_powers_off_after_its_operations(tmp_path) -> None:
    """With no operations to do it only boots, sets everything up and says goodbye."""
    for outcome in (run_in_process(3, Plan(ops=0), tmp_path / "disk"),
                    run_command(3, Plan(ops=0), tmp_path / "disk")):
        assert (outcome.kind, outcome.detail, outcome.ops) == (POWERED_OFF, POWER_OFF, 0)


def test_short_campaign_has_no_failures() -> None:
    report = Campaign(Plan(ops=CI_OPS, timeout=10), workers=2, command_every=10).run(FIRST_SEED, runs=CI_RUNS)
    assert [(f.seed, f.kind, f.reason, f.detail) for f in report.failures] == []
    assert report.runs == CI_RUNS and report.command_runs == CI_RUNS // 10
    assert report.ops >= 1000
    powered_off = sum(n for (kind, _), n in report.outcomes.items() if kind == POWERED_OFF)
    assert powered_off >= 1  # the Guest really can finish its operations


def python(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_a_worker_that_raises_is_a_failure_with_its_seed() -> None:
    worker = python("import sys; sys.stdin.readline(); raise RuntimeError('deliberately broken')")
    report = Campaign(Plan(), workers=1, worker_argv=worker).run(7, runs=2)
    assert [(f.seed, f.kind) for f in report.failures] == [(7, WORKER_DIED), (8, WORKER_DIED)]
    assert "RuntimeError: deliberately broken" in report.failures[0].detail


def test_a_run_that_hangs_is_a_failure_with_its_seed() -> None:
    worker = python("import sys, time; sys.stdin.readline(); time.sleep(3600)")
    report = Campaign(Plan(timeout=1), workers=1, worker_argv=worker).run(42, runs=1)
    assert [(f.seed, f.kind) for f in report.failures] == [(42, HANG)]


def test_an_lguest_that_exits_3_is_a_failure_with_its_seed() -> None:
    launcher = python("import sys; print('lguest: internal error: deliberately broken', file=sys.stderr);"
                      " sys.exit(3)")
    report = Campaign(Plan(), workers=1, command_every=1, launcher=launcher).run(5, runs=1)
    assert [(f.seed, f.kind, f.reason) for f in report.failures] == [(5, EXIT_STATUS, "lguest exited 3")]
    assert "internal error: deliberately broken" in report.failures[0].detail
