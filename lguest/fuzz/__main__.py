"""`python -m lguest.fuzz`: run a fuzz campaign and report it.

    python -m lguest.fuzz --minutes 30 [--seed S] [--workers K] [--ops N]
    python -m lguest.fuzz --runs 1 --seed S          (replay one seed)

Exit status 0 when no run failed, 1 when any did (each failure is listed with
its seed and a command that replays it), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from lguest.fuzz.campaign import Campaign, Report
from lguest.fuzz.kernel import fuzz_kernel
from lguest.fuzz.run import Outcome, Plan, command_line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lguest.fuzz", description="Fuzz the Host and Launcher.")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="run for this long (default 1)")
    budget.add_argument("--runs", type=int, help="run this many seeds instead")
    parser.add_argument("--seed", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--ops", type=int, default=Plan.ops, help="operations per boot")
    parser.add_argument("--command-every", type=int, default=50, metavar="N",
                        help="every Nth seed boots through the real `lguest` command (0: none)")
    parser.add_argument("--mask-eflags", type=lambda s: int(s, 0), default=0, metavar="BITS",
                        help="EFLAGS bits the Guest never sets (e.g. 0x20000 to step around vm86)")
    parser.add_argument("--timeout", type=float, default=Plan.timeout, help="seconds before a run is a hang")
    args = parser.parse_args(argv)
    if args.minutes is None and args.runs is None:
        args.minutes = 1.0
    return args


def replay(outcome: Outcome, args: argparse.Namespace, plan: Plan) -> str:
    ours = f"python -m lguest.fuzz --runs 1 --seed {outcome.seed} --ops {plan.ops} --workers 1"
    if plan.mask_eflags:
        ours += f" --mask-eflags {plan.mask_eflags:#x}"
    if outcome.via_command:
        ours += f" --command-every 1   # or: {' '.join(command_line(outcome.seed, plan, 'disk.img'))}"
    else:
        ours += " --command-every 0"
    return ours


def print_progress(report: Report) -> None:
    print(f"lguest.fuzz: {report.seconds:.0f} s: {report.runs} runs, {report.ops} operations,"
          f" {len(report.failures)} failures", file=sys.stderr, flush=True)


def print_report(report: Report, args: argparse.Namespace, plan: Plan) -> None:
    rate = report.ops / report.seconds if report.seconds else 0.0
    print(f"{report.runs} runs ({report.command_runs} through the lguest command) in {report.seconds:.0f} s")
    print(f"operations executed: {report.ops} ({rate:.0f} per second)")
    print("outcomes by reason:")
    for (kind, reason), count in report.outcomes.most_common():
        print(f"  {count:7d}  {kind}: {reason}")
    print(f"failures: {len(report.failures)}")
    for failure in report.failures:
        print(f"- seed {failure.seed}: {failure.kind}: {failure.reason}")
        print(f"  replay: {replay(failure, args, plan)}")
        for line in failure.detail.strip().splitlines()[-12:]:
            print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = Plan(ops=args.ops, mask_eflags=args.mask_eflags, timeout=args.timeout)
    fuzz_kernel()  # build it once here, not in every worker at the same moment
    campaign = Campaign(plan, args.workers, args.command_every)
    seconds = args.minutes * 60 if args.minutes is not None else None
    report = campaign.run(args.seed, seconds=seconds, runs=args.runs, progress=print_progress)
    print_report(report, args, plan)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
