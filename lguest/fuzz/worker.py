"""A fuzz worker process: runs the seeds its parent sends, one JSON outcome each.

Protocol: one line per run on stdin, `<seed> <in-process|command>`, the plan as
JSON on the command line; one JSON line back per run.  After an in-process hang
the worker exits (its vCPU thread is stuck) and the parent starts another.  Its own stdout is the
protocol's alone: anything else the Launcher might print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from lguest.fuzz.run import HANG, Plan, run_command, run_in_process

IN_PROCESS, COMMAND = "in-process", "command"


def main() -> None:
    plan = Plan(**json.loads(sys.argv[1]))
    launcher = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with tempfile.TemporaryDirectory(prefix="lguest-fuzz-") as scratch:
        disk = Path(scratch) / "disk.img"
        for line in sys.stdin:
            word, how = line.split()
            seed = int(word)
            if how == COMMAND:
                outcome = run_command(seed, plan, disk, launcher)
            else:
                outcome = run_in_process(seed, plan, disk)
            replies.write(json.dumps(outcome.to_json()) + "\n")
            if outcome.kind == HANG and how == IN_PROCESS:
                os._exit(0)  # the stuck vCPU thread cannot be stopped: leave it behind


if __name__ == "__main__":
    main()
