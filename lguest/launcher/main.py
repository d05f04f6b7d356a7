"""The `lguest` command: load a Guest, give it devices, run it, report how it ended.

Exit status: 0 when the Guest powers itself off, 1 when it dies (killed by the
Host or the Launcher, or panics), 2 for a bad command line or a kernel that cannot
be loaded.  A Guest that asks to restart is built again from scratch, in-process.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import termios
import time
import traceback
import tty
from collections.abc import Iterator
from typing import TextIO

from lguest import abi
from lguest.debug.session import DebugTools
from lguest.host.core import RunResult
from lguest.launcher import bundled
from lguest.launcher.boot import LoadError
from lguest.launcher.machine import Machine, build_machine
from lguest.launcher.options import USAGE, HelpRequested, Options, UsageError, parse_args
from lguest.launcher.trace import StderrTracer

# The reason Linux (and puppy) give when they power off cleanly.
POWER_OFF_REASON = "CRASH: Power down"
STOPPED_BY_USER = "stopped from the console (Ctrl-C three times, or Ctrl-])"


def stderr_line(text: str) -> None:
    print(f"lguest: {text}", file=sys.stderr, flush=True)


class ConsoleOutput:
    """The Launcher's stdout: Guest bytes, flushed at each newline and at the end."""

    def __init__(self) -> None:
        self.out = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.out.write(data)
        if b"\n" in data:
            self.out.flush()

    def flush(self) -> None:
        self.out.flush()


def exit_status(result: RunResult) -> int:
    """0 for a clean power-off, 1 for any other death."""
    clean = result.shutdown_how == abi.LGUEST_SHUTDOWN_POWEROFF and result.reason == POWER_OFF_REASON
    return 0 if clean else 1


def run(opts: Options) -> int:
    say = stderr_line if opts.verbose else _quiet
    kernel_path = opts.kernel if opts.kernel is not None else str(bundled.puppy_path())
    output = ConsoleOutput()
    tools = DebugTools(opts, stderr_line)
    tracer = tools.tracer(StderrTracer(opts.trace) if opts.trace else None)
    started = time.perf_counter()
    with terminal_in_raw_mode(sys.stdin):
        while True:
            machine = build_machine(opts, kernel_path, output.write, sys.stdin.fileno(), say,
                                    stderr_line, tracer)
            machine.console.on_escape = lambda m=machine: m.guest.kill(STOPPED_BY_USER)
            tools.attach(machine)
            try:
                result = machine.guest.run()
            finally:
                machine.close()
                output.flush()
            say(f"{machine.ports.count} port I/O accesses")
            if not result.restart:
                break
            say("Guest asked to restart: restarting")
    stderr_line(result.reason.rstrip("\n"))
    elapsed = time.perf_counter() - started
    status = 130 if machine.console.escaped else exit_status(result)
    tools.finish(status, figures(machine, elapsed))
    if opts.stats_json:
        print(tools.figures_json(figures(machine, elapsed)), file=sys.stderr, flush=True)  # one line
    elif opts.stats:
        stderr_line(statistics(machine, elapsed))
    return status


def statistics(machine: Machine, elapsed: float) -> str:
    """Where the time went (the last boot, if the Guest restarted)."""
    f = figures(machine, elapsed)
    emulating = machine.guest.cpu.emulating
    return (f"{elapsed:.2f} s: {emulating:.2f} s emulating, {elapsed - emulating:.2f} s in the Host"
            f" and Launcher; {f['world_switches']} world switches, {f['hypercalls']} hypercalls,"
            f" {f['page_faults_served']} page faults served by the Host,"
            f" {f['traps_reflected']} traps reflected,"
            f" {f['direct_traps']} direct traps, {f['interrupts']} interrupts, {f['port_ios']} port I/Os")


def figures(machine: Machine, elapsed: float) -> dict[str, object]:
    """The --stats line's figures, by name (also --stats=json's and the timeline's)."""
    cpu, stats = machine.guest.cpu, machine.guest.stats
    return {"seconds": round(elapsed, 6), "seconds_emulating": round(cpu.emulating, 6),
            "world_switches": cpu.runs, "hypercalls": stats["hypercalls"], "page_faults_served": cpu.fills,
            "traps_reflected": stats["reflected traps"], "direct_traps": cpu.direct_traps,
            "interrupts": stats["interrupts"], "port_ios": machine.ports.count}


@contextlib.contextmanager
def terminal_in_raw_mode(stream: TextIO) -> Iterator[None]:
    """Keys go to the Guest as typed (no echo, no line editing, no signals from ^C),
    and the terminal comes back as it was however we leave, SIGTERM and SIGHUP included."""
    if not stream.isatty():
        yield
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    raw = termios.tcgetattr(fd)
    raw[tty.IFLAG] &= ~(termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR)
    raw[tty.LFLAG] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[tty.CC][termios.VMIN], raw[tty.CC][termios.VTIME] = 1, 0
    try:
        # Output processing stays on, so a Guest's bare "\n" still starts a new line.
        termios.tcsetattr(fd, termios.TCSAFLUSH, raw)
        yield
    finally:
        # At once: waiting for the output to drain could wait forever on a reader gone.
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except HelpRequested:
        print(USAGE, end="")
        return 0
    except UsageError as err:
        stderr_line(str(err))
        print(USAGE, end="", file=sys.stderr)
        return 2
    try:
        return run(opts)
    except LoadError as err:
        stderr_line(str(err))
        return 2
    except KeyboardInterrupt:
        stderr_line("interrupted")
        return 130
    except Exception as err:  # a bug in lguest itself: say so in one line
        if opts.verbose:
            traceback.print_exc()
        stderr_line(f"internal error: {type(err).__name__}: {err} (--verbose shows the traceback)")
        return 3


def _quiet(_: str) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
