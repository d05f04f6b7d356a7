"""The debugging tools one `lguest` run asked for, set up and finished in one place.

`--gdb` makes a stub, `--trace-file` a timeline, `--stats=json` the figures; all
three want the same per-kind counts, so one `Census` serves them.  The Launcher
calls `tracer` once, `attach` for every boot (a restarted Guest keeps its
debugger and timeline) and `finish` when the Guest is gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lguest.debug.census import Census
from lguest.debug.gdbstub import GdbStub
from lguest.debug.timeline import Timeline
from lguest.host.core import Tracer
from lguest.launcher.boot import LoadError
from lguest.launcher.machine import Machine
from lguest.launcher.options import Options
from lguest.launcher.trace import Tracers


class DebugTools:
    def __init__(self, opts: Options, say: Callable[[str], None]) -> None:
        self.census = Census()
        self.stub: GdbStub | None = None
        self.timeline = Timeline() if opts.trace_file else None
        self.trace_file = opts.trace_file
        self.wanted = bool(opts.gdb or opts.trace_file or opts.stats_json)
        if self.trace_file:
            _check_writable(self.trace_file)
        if opts.gdb:
            host, port = opts.gdb
            try:
                self.stub = GdbStub(host, port, opts.gdb_wait, self.census)
            except OSError as err:
                raise LoadError(f"cannot listen for gdb on {host}:{port}: {err.strerror or err}") from None
            where = self.stub.address
            say(f"gdb stub listening on {where[0]}:{where[1]}"
                f"{' (the Guest waits for gdb)' if opts.gdb_wait else ''}")

    def tracer(self, others: Tracer | None) -> Tracer | None:
        """The Host's one tracer: --trace's, and ours when any tool is on."""
        if not self.wanted:
            return others
        chain: list[Tracer] = [] if others is None else [others]
        chain.append(self.census)
        chain += [t for t in (self.timeline, self.stub) if t is not None]
        return Tracers(chain)

    def attach(self, machine: Machine) -> None:
        if self.stub:
            self.stub.attach(machine.guest)
        if self.timeline:
            for device in machine.devices:
                self.timeline.watch_device(device)

    def finish(self, status: int, figures: dict[str, object]) -> None:
        """The Guest is gone: gdb hears its exit status, the timeline is written."""
        if self.stub:
            self.stub.finished(status)
        if self.timeline and self.trace_file:
            with open(self.trace_file, "w") as out:
                json.dump(self.timeline.document(figures), out, separators=(",", ":"))

    def figures_json(self, figures: dict[str, object]) -> str:
        return json.dumps(figures | self.census.as_dict(), sort_keys=True)


def _check_writable(path: str) -> None:
    """Fail at start, not after a long run, if the trace file cannot be written."""
    try:
        with open(path, "w"):
            pass
    except OSError as err:
        raise LoadError(f"cannot write --trace-file {path}: {err.strerror}") from None
