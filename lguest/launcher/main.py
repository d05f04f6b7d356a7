"""The `lguest` command: load a Guest, give it devices, run it, report how it ended.

Exit status: 0 when the Guest powers itself off, 1 when it dies (killed by the
Host or the Launcher, or panics), 2 for a bad command line or a kernel that cannot
be loaded.  A Guest that asks to restart is built again from scratch, in-process.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from lguest import abi
from lguest.host.core import Guest, RunResult
from lguest.launcher import bundled
from lguest.launcher.boot import (
    KernelImage,
    LoadError,
    allocate_guest_ram,
    load_initrd,
    load_kernel,
    write_boot_params,
)
from lguest.launcher.console import ConsoleDevice
from lguest.launcher.options import USAGE, HelpRequested, Options, UsageError, parse_args
from lguest.launcher.pci import PciBus
from lguest.launcher.ports import Ports
from lguest.launcher.trace import StderrTracer

MIB = 1 << 20
# The reason Linux (and puppy) give when they power off cleanly.
POWER_OFF_REASON = "CRASH: Power down"


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


@dataclass
class Machine:
    """One boot of a Guest: its RAM, kernel, devices and the Host's view of it."""

    guest: Guest
    kernel: KernelImage
    ports: Ports
    mmio_end: int


def build_machine(opts: Options, kernel_path: str, console: ConsoleOutput,
                  say: Callable[[str], None]) -> Machine:
    mem = opts.mem_mib * MIB
    ram = allocate_guest_ram(mem)
    kernel = load_kernel(ram, mem, kernel_path)
    initrd = load_initrd(ram, mem, opts.initrd, kernel) if opts.initrd else None
    write_boot_params(ram, mem, opts.cmdline, initrd)
    pci = PciBus()
    device = ConsoleDevice(abi.CONSOLE_IRQ, console.write)
    slot = pci.add(device)
    mmio = mem + abi.DEVICE_PAGES * abi.PAGE_SIZE
    device.place(mmio)
    mmio_end = mmio + device.mmio_size
    ports = Ports(pci, stderr_line)
    tracer = StderrTracer(opts.trace) if opts.trace else None
    guest = Guest(ram, mem, kernel.entry, ports, syscall_vector=opts.syscall_vector, tracer=tracer)
    guest.pages.device_limit = -(-mmio_end // abi.PAGE_SIZE)
    device.fatal = guest.kill
    say(f"Guest: 0x0 - {mem:#x} ({mem:#x}, MMIO {mmio:#x})")
    for i, (gpa, size) in enumerate(kernel.sections):
        say(f"Section {i}: size {size} addr {gpa:#x}")
    if initrd:
        say(f"mapped initrd {opts.initrd} size={initrd[1]} @ {initrd[0]:#x}")
    say(f"device {slot}: console")
    return Machine(guest, kernel, ports, mmio_end)


def exit_status(result: RunResult) -> int:
    """0 for a clean power-off, 1 for any other death."""
    clean = result.shutdown_how == abi.LGUEST_SHUTDOWN_POWEROFF and result.reason == POWER_OFF_REASON
    return 0 if clean else 1


def run(opts: Options) -> int:
    say = stderr_line if opts.verbose else _quiet
    kernel_path = opts.kernel if opts.kernel is not None else str(bundled.puppy_path())
    console = ConsoleOutput()
    try:
        while True:
            machine = build_machine(opts, kernel_path, console, say)
            result = machine.guest.run()
            say(f"{machine.ports.count} port I/O accesses")
            if not result.restart:
                break
            console.flush()
            say("Guest asked to restart: restarting")
    finally:
        console.flush()
    stderr_line(result.reason.rstrip("\n"))
    return exit_status(result)


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
    if opts.devices:
        stderr_line("--block, --rng and --tunnet are not supported yet")
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
