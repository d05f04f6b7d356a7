"""The `lguest` command: load a Guest, give it devices, run it, report how it ended.

Exit status: 0 when the Guest powers itself off, 1 when it dies (killed by the
Host or the Launcher, or panics, or its console output cannot be written), 2 for a
bad command line, a file or kernel that cannot be used, or no standard output;
128+signum when stopped by SIGINT, SIGTERM or SIGHUP, and 130 for the escape keys
(0 after --snapshot-and-exit has saved the Guest);
3 only for a bug in lguest itself.  A Guest that asks to restart is built again
from scratch, in-process.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import time
import traceback
import tty
from collections.abc import Callable, Iterator

from lguest import abi
from lguest.debug.session import DebugTools
from lguest.host.core import Guest, RunResult
from lguest.launcher import bundled, snapshot
from lguest.launcher.boot import LoadError
from lguest.launcher.control import Keyboard, StopRequest, stopped_by_signals
from lguest.launcher.machine import Machine, build_machine
from lguest.launcher.options import USAGE, HelpRequested, Options, UsageError, parse_args
from lguest.launcher.trace import StderrTracer

# The reason Linux (and puppy) give when they power off cleanly.
POWER_OFF_REASON = "CRASH: Power down"
STDIN, STDOUT = 0, 1
OUTPUT_WAIT = 0.05  # seconds: how long a write waits for stdout before looking for a stop


def stderr_line(text: str) -> None:
    """One `lguest: ...` line; with stderr closed or broken there is nobody to tell."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            print(f"lguest: {text}", file=sys.stderr, flush=True)


# tour:L.80 The console's output
# Our standard output is the Guest's console.  Two writers share it: the vCPU thread, which
# delivers the early console one byte at a time, and the console device's output thread.
# A slow or stuck reader must never stop us from noticing Ctrl-] or SIGTERM, so we only
# write what stdout will take at once, and wait for it in short steps.
class ConsoleOutput:
    """The Launcher's stdout: the Guest's console.

    The early console arrives a byte at a time, so single bytes are gathered into
    lines; anything longer (a whole write from the Guest's driver) goes out at once.
    The vCPU (early console) and the console's output thread both write here.  When
    stdout refuses (a full disk, a reader gone, a terminal closed), the first error is
    kept in `failed`, the Guest is told through `on_failure`, and later output dropped.
    A stdout nobody reads must not make us deaf to a stop: we wait for it to take
    more only in short waits, and give up on what is left once a stop is requested.
    """

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.pending = bytearray()
        self.failed: str | None = None
        self.on_failure: Callable[[str], None] = lambda reason: None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.pending += data
            if len(data) > 1 or data == b"\n":
                self._write_pending()

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        try:
            while self.pending and self.stop.status is None:
                if select.select([], [STDOUT], [], OUTPUT_WAIT)[1]:
                    # No more than a pipe takes at once, so the write itself never waits.
                    del self.pending[:os.write(STDOUT, self.pending[:select.PIPE_BUF])]
        except OSError as err:
            self.pending.clear()
            if self.failed is None:
                self.failed = f"console: output: {err.strerror}"
                self.on_failure(self.failed)


def exit_status(result: RunResult) -> int:
    """0 for a clean power-off, 1 for any other death."""
    clean = result.shutdown_how == abi.LGUEST_SHUTDOWN_POWEROFF and result.reason == POWER_OFF_REASON
    return 0 if clean else 1


# tour:L.90 Run, and how it ended
# The Launcher's main loop.  Build a machine, then `guest.run()`: that is the Host's run
# loop (chapter H), which returns only when the Guest is dead, wants a restart, or was
# asked to stop.  The devices run meanwhile in their own threads.  Then the exit status:
# 0 if the Guest powered off cleanly, 1 if it died (killed by the Host or a device, or
# it panicked), 128+signum when a signal stopped it, 2 for a bad command line or file,
# and 3 only for a bug of ours.
def run(opts: Options) -> int:
    say = stderr_line if opts.verbose else _quiet
    saved = snapshot.read(opts.restore) if opts.restore else None
    if saved is not None:
        opts = snapshot.restored_options(saved, opts, opts.force_restore)
    kernel_path = opts.kernel if opts.kernel is not None else str(bundled.puppy_path(opts.pae is True))
    input_fd = STDIN if _is_open(STDIN) else None
    stop = StopRequest()
    output = ConsoleOutput(stop)
    tools = DebugTools(opts, stderr_line)
    tracer = tools.tracer(StderrTracer(opts.trace) if opts.trace else None)
    started = time.perf_counter()
    machine: Machine | None = None
    result: RunResult | None = None

    def save(guest: Guest) -> None:
        """The vCPU, at a safe point: the Guest to --snapshot's file, then on it goes."""
        assert machine is not None
        if opts.snapshot is None:
            stderr_line("no --snapshot=<file> given: nowhere to save the Guest")
            return
        try:
            size = snapshot.save(opts.snapshot, opts, guest, machine.devices, machine.ram)
        except OSError as err:
            stderr_line(f"snapshot {opts.snapshot}: {err.strerror or err}: the Guest carries on")
            return
        stderr_line(f"snapshot saved to {opts.snapshot} ({size // 1024} KiB)")
        if opts.snapshot_and_exit:
            stop.request(0, "Guest saved, Launcher ended (--snapshot-and-exit)")

    stop.save_action = save
    with stopped_by_signals(stop), terminal_in_raw_mode(input_fd):
        keyboard = Keyboard(input_fd, stop) if input_fd is not None else None
        while stop.status is None:
            machine = build_machine(opts, kernel_path, output.write, keyboard, say, stderr_line, tracer,
                                    saved)
            saved = None  # a restart after a restore boots the kernel afresh
            output.on_failure = machine.guest.kill
            stop.running(machine.guest)
            tools.attach(machine)
            try:
                result = machine.guest.run()
            finally:
                stop.running(None)
                machine.close()
                output.flush()
            say(f"{machine.ports.count + machine.guest.switcher.port_reads_served} port I/O accesses")
            if not result.restart or machine.guest.stopped:
                break
            say("Guest asked to restart: restarting")
    if stop.status is not None:
        stderr_line(stop.message)
        status = stop.status
    else:
        assert result is not None
        stderr_line((output.failed or result.reason).rstrip("\n"))
        status = 1 if output.failed else exit_status(result)
    if machine is not None:
        report(opts, tools, machine, status, time.perf_counter() - started)
    return status


def report(opts: Options, tools: DebugTools, machine: Machine, status: int, elapsed: float) -> None:
    """Tell gdb how the Guest ended, write the timeline, and print --stats."""
    tools.finish(status, figures(machine, elapsed))
    if opts.stats_json:
        print(tools.figures_json(figures(machine, elapsed)), file=sys.stderr, flush=True)  # one line
    elif opts.stats:
        stderr_line(statistics(machine, elapsed))


def statistics(machine: Machine, elapsed: float) -> str:
    """Where the time went (the last boot, if the Guest restarted)."""
    f = figures(machine, elapsed)
    emulating, hooks = machine.guest.switcher.emulating, machine.guest.switcher.in_hooks
    return (f"{elapsed:.2f} s: {emulating:.2f} s emulating, {hooks:.2f} s in the Host's hooks inside"
            f" the emulator, {elapsed - emulating - hooks:.2f} s in the Host and Launcher between runs;"
            f" {f['world_switches']} world switches, {f['hypercalls']} hypercalls,"
            f" {f['page_faults_served']} page faults served by the Host,"
            f" {f['traps_reflected']} traps reflected,"
            f" {f['direct_traps']} direct traps, {f['interrupts']} interrupts, {f['port_ios']} port I/Os")


def figures(machine: Machine, elapsed: float) -> dict[str, object]:
    """The --stats line's figures, by name (also --stats=json's and the timeline's)."""
    switcher, stats = machine.guest.switcher, machine.guest.stats
    return {"seconds": round(elapsed, 6), "seconds_emulating": round(switcher.emulating, 6),
            "seconds_in_hooks": round(switcher.in_hooks, 6),
            "world_switches": switcher.runs, "hypercalls": stats["hypercalls"],
            "page_faults_served": switcher.fills,
            "traps_reflected": machine.guest.traps_reflected, "direct_traps": switcher.direct_traps,
            "interrupts": stats["interrupts"], "port_ios": machine.ports.count + switcher.port_reads_served}


# tour:L.110 The terminal in raw mode
# At a terminal, keys go to the Guest as they are typed: no echo, no line editing, and
# no SIGINT from ^C (the Guest's shell wants it; three in a row are our escape).  Output
# processing stays on, so a Guest's bare newline still starts a new line, and the old
# settings come back however we leave.
@contextlib.contextmanager
def terminal_in_raw_mode(fd: int | None) -> Iterator[None]:
    """Keys go to the Guest as typed (no echo, no line editing, no signals from ^C),
    and the terminal comes back as it was however we leave."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    raw = termios.tcgetattr(fd)
    raw[tty.IFLAG] &= ~(termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR)
    raw[tty.LFLAG] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[tty.CC][termios.VMIN], raw[tty.CC][termios.VTIME] = 1, 0
    try:
        # Output processing stays on, so a Guest's bare "\n" still starts a new line.
        # TCSANOW, not TCSAFLUSH: keys typed ahead are kept for the Guest.
        termios.tcsetattr(fd, termios.TCSANOW, raw)
        yield
    finally:
        # At once: waiting for the output to drain could wait forever on a reader gone.
        # A terminal closed under us (EIO) has no settings left to restore.
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except HelpRequested:
        print(USAGE, end="")
        return 0
    except UsageError as err:
        stderr_line(str(err))
        if sys.stderr is not None:
            print(USAGE, end="", file=sys.stderr)
        return 2
    if not _is_open(STDOUT):
        stderr_line("standard output is closed: nowhere to show the Guest's console")
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
        stderr_line(f"internal error (a bug in lguest: please report): {type(err).__name__}: {err}"
                    " (--verbose shows the traceback)")
        return 3


def _quiet(_: str) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
