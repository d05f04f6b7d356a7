"""The Host's core: one Guest, its run loop, and the API the Launcher drives.

This mirrors /dev/lguest (spec §8.2) as Python calls: the Launcher creates a
`Guest` with its RAM and entry point, may raise interrupts, read and set
registers and inject traps, and calls `run()`, which returns only when the Guest
dies or asks to be restarted.  Port I/O reaches the Launcher through the `bus`
it handed us; the Host itself knows nothing of devices, files or terminals.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lguest import abi
from lguest.abi import LguestData, PtRegs
from lguest.host import hypercalls
from lguest.host.clock import Clock
from lguest.host.cpu import Exit, ExitKind, PortBus, Switcher
from lguest.host.faultaddr import fault_address
from lguest.host.interrupts import Idt, deliver_interrupt, deliver_trap, direct_trap
from lguest.host.kick import Kicker
from lguest.host.memory import GuestMemory, hex32
from lguest.host.page_tables import PageTables
from lguest.host.segments import Segments


class Tracer(Protocol):
    """Receives one call per event when the Launcher asked for --trace."""

    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None: ...

    def trap(self, guest: Guest, exit_: Exit) -> None: ...

    def irq(self, guest: Guest, irq: int) -> None: ...


class Debugger(Protocol):
    """The Launcher's gdb stub, as the run loop sees it (the Host never talks to gdb)."""

    @property
    def wants_stop(self) -> bool:
        """gdb asked for the Guest (Ctrl-C, a breakpoint hit, a finished step)."""
        ...

    @property
    def holds_interrupts(self) -> bool:
        """A single step is under way: interrupts wait until it is over (as QEMU's stub)."""
        ...

    def safe_point(self, guest: Guest) -> None:
        """Called between runs, where the Guest's state is whole; may block while gdb looks."""
        ...


@dataclass(frozen=True)
class RunResult:
    """How a Guest's run ended."""

    reason: str  # the first reason the Guest was killed for
    restart: bool  # it asked to be restarted (SHUTDOWN with LGUEST_SHUTDOWN_RESTART)
    shutdown_how: int | None  # SHUTDOWN's arg2 if the Guest shut itself down


PT_REG_NAMES = {
    PtRegs.BX: "ebx", PtRegs.CX: "ecx", PtRegs.DX: "edx", PtRegs.SI: "esi", PtRegs.DI: "edi",
    PtRegs.BP: "ebp", PtRegs.AX: "eax", PtRegs.DS: "ds", PtRegs.ES: "es", PtRegs.FS: "fs",
    PtRegs.GS: "gs", PtRegs.IP: "eip", PtRegs.CS: "cs", PtRegs.FLAGS: "eflags", PtRegs.SP: "esp",
    PtRegs.SS: "ss",
}

INSN_MAX = 15  # the longest x86 instruction
RECHECK_SECONDS = 0.001  # how soon a deferred interrupt is looked at again


class Guest:
    """One Guest (lguest's `struct lguest` with its single `struct lg_cpu`)."""

    def __init__(self, ram: mmap.mmap, mem_size: int, start: int, bus: PortBus, *,
                 syscall_vector: int = abi.SYSCALL_VECTOR, tracer: Tracer | None = None,
                 pae: bool = False) -> None:
        self.dead: str | None = None
        self.stopped = False  # the Launcher asked run() to return (stop_run)
        self.restart = False
        self.shutdown_how: int | None = None
        self.mem = GuestMemory(ram, mem_size, self.kill)
        self.syscall_vector = syscall_vector
        self.tracer = tracer
        self.debugger: Debugger | None = None
        self._ram_anchor = ctypes.c_char.from_buffer(ram)
        self.pages = PageTables(self, pae)
        self.cpu = Switcher(ctypes.addressof(self._ram_anchor), mem_size, self.pages, bus)
        self.idt = Idt(self)
        self.segments = Segments(self)
        self.clock = Clock(self.interrupt)
        self.kicker = Kicker(self.cpu.stop)
        self.cpu.direct_trap = lambda vector, errcode, software: direct_trap(self, vector, errcode, software)
        # lguest_data and what INIT read from it
        self.lguest_data: int | None = None
        self.noirq_iret = 0
        self.kernel_address = 0
        self.next_hcall = 0
        # vCPU state the Host keeps
        self.hcall_pending = False
        self.halted = False
        self.ts = 0
        self.ss1 = 0
        self.esp1 = 0
        self.stack_pages = 0
        self.irqs_pending = 0
        self.stats: Counter[str] = Counter()  # hypercalls, reflected traps, interrupts (--stats)
        self._irq_lock = threading.Lock()
        self._wake = threading.Event()
        self._initial_state(start)

    def _initial_state(self, start: int) -> None:
        """§3.4: ring 1, flat kernel segments, everything else zero."""
        for reg in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
            self.cpu.set(reg, 0)
        self.cpu.load_frame(start, abi.KERNEL_CS, abi.INITIAL_EFLAGS, 0, abi.KERNEL_DS,
                            abi.KERNEL_DS, abi.KERNEL_DS, 0, 0)

    # --- death ---------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """kill_guest: the first reason is the one that counts.  Any thread may call it."""
        if self.dead is None:
            self.dead = reason
        self._wake.set()
        self.kicker.kick()

    # --- the Launcher's API (LHREQ_*) ----------------------------------------------------
    def interrupt(self, irq: int) -> bool:
        """LHREQ_IRQ: mark irq pending and kick the vCPU.  Safe from any thread."""
        if not 0 <= irq < abi.LGUEST_IRQS:
            return False
        with self._irq_lock:
            self.irqs_pending |= 1 << irq
        self._wake.set()
        self.kicker.kick()
        return True

    def stop_run(self) -> None:
        """Make run() return promptly, the Guest unharmed and no kill reason given.

        For the Launcher's signals and escape keys, from any thread: a halted vCPU
        wakes, a running one leaves the emulator at its next block.
        """
        self.stopped = True
        self._wake.set()
        self.kicker.kick()

    def get_reg(self, offset: int) -> int:
        """LHREQ_GETREG: a register by its offset in i386 `struct pt_regs`."""
        return self.cpu.get(PT_REG_NAMES[offset])

    def set_reg(self, offset: int, value: int) -> bool:
        """LHREQ_SETREG: only the general registers, eip and esp may be set."""
        if offset not in abi.SETTABLE_PT_REGS:
            return False
        self.cpu.set(PT_REG_NAMES[offset], value)
        return True

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Give a Launcher device window (page-aligned) to the Guest's physical map."""
        self.cpu.map_mmio(gpa, size, read, write)
        self.pages.mmio_pages.update(range(gpa >> abi.PAGE_SHIFT, (gpa + size) >> abi.PAGE_SHIFT))

    def inject_trap(self, num: int, errcode: int = 0) -> bool:
        """LHREQ_TRAP: deliver a trap into the Guest now; False if it has no handler."""
        return deliver_trap(self, num, errcode)

    def run(self) -> RunResult:
        """The run loop (§4.2): returns when the Guest is dead or wants a restart."""
        try:
            while not self.dead:
                self.cpu.doorbell_answered()
                if self.stopped:  # looked at after the doorbell is reset, so no stop is missed
                    break
                if self.hcall_pending:
                    self.hcall_pending = False
                    hypercalls.do_hypercalls(self)
                    if self.dead:
                        break
                if self.debugger:
                    self.debugger.safe_point(self)
                    if self.dead:
                        break
                if not self._interrupts_held():
                    self._deliver_pending_interrupt()
                if self.dead:
                    break
                if self.halted:
                    self._sleep_until_interrupt()
                    continue
                self.handle_trap(self.cpu.run())
        finally:
            self.clock.close()
            self.kicker.close()
        return RunResult(self.dead or "", self.restart, self.shutdown_how)

    # --- traps ---------------------------------------------------------------------------
    def handle_trap(self, exit_: Exit) -> None:
        """lguest_arch_handle_trap (§4.3): decide what each return to the Host means."""
        if self.dead:
            return
        if self.tracer:
            self.tracer.trap(self, exit_)
        if exit_.kind is ExitKind.HALTED:
            return
        if exit_.kind is ExitKind.PAGE_FAULT:
            self._reflect_page_fault(exit_)
            return
        num, errcode = exit_.trapnum, exit_.errcode
        if exit_.eip is not None:
            self.cpu.set("eip", exit_.eip)
        if num == abi.TRAPNUM_IN_SWITCHER:
            self.kill(f"unhandled trap {num} at {hex32(self.cpu.get('eip'))} ({hex32(errcode)})")
        elif num == abi.LGUEST_TRAP_ENTRY and self.cpu.cpl <= abi.GUEST_PL:
            self.hcall_pending = True
        elif exit_.software and self.cpu.cpl > self.idt.software_int_dpl(num, self.syscall_vector):
            # `int n` through a gate the caller may not use: #GP with the IDT error code.
            self.cpu.set("eip", self.cpu.get("eip") - exit_.insn_len)
            self.reflect(abi.Trap.GP, num * 8 + 2)
        elif not self._handled_by_host(num, errcode):
            self.reflect(num, errcode)

    def _handled_by_host(self, num: int, errcode: int) -> bool:
        """Traps the Guest never sees: an emulated #GP(0), or #NM it did not ask for."""
        if num == abi.Trap.GP and errcode == 0:
            return self._emulate_insn()
        return num == abi.Trap.NM and not self.ts

    def reflect(self, num: int, errcode: int, cr2: int | None = None) -> None:
        """Deliver a trap to the Guest's handler, or kill it if it has none."""
        self.stats["reflected traps"] += 1
        eip = self.cpu.get("eip")
        if not deliver_trap(self, num, errcode) and not self.dead:
            detail = errcode if cr2 is None else cr2
            self.kill(f"unhandled trap {num} at {hex32(eip)} ({hex32(detail)})")

    def _reflect_page_fault(self, exit_: Exit) -> None:
        """A fault demand paging could not fix (§4.3, trap 14): the Guest's to handle.

        Before INIT there is no lguest_data to tell cr2 in, and no IDT either:
        the fault is simply unhandled, as in lguest.
        """
        cr2 = self.fault_address(exit_)
        if self.lguest_data is not None and not self.mem.write_u32(self.lguest_data + LguestData.CR2, cr2):
            self.kill("Writing cr2")
            return
        self.reflect(abi.Trap.PF, exit_.errcode, cr2)

    def fault_address(self, exit_: Exit) -> int:
        """The exact faulting address (the emulator only names the page)."""
        eip = self.cpu.get("eip")
        gpa = self.pages.peek(eip)
        code = b"" if gpa is None else self.mem.ram[gpa:min(gpa + INSN_MAX, self.mem.size)]
        return fault_address(exit_.address, eip, code, exit_.fetch, self.cpu.get,
                             lambda seg: self.segments.base(self.cpu.get(seg)))

    def _emulate_insn(self) -> bool:
        """A #GP(0) at ring 1 the Host can finish for the Guest (§7.1): only `cli`.

        Port I/O never gets here (the Switcher passes it to the bus directly);
        a `cli` left in non-paravirtualised code is simply skipped.
        """
        if self.cpu.cpl != abi.GUEST_PL:
            return False
        eip = self.cpu.get("eip")
        gpa = self.pages.guest_pa(eip)
        if gpa is None or not self.mem.ok(gpa, 1):
            return False
        if self.mem.ram[gpa] == abi.OPCODE_CLI:
            self.cpu.set("eip", eip + 1)
            return True
        return False

    def enter(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """Resume the Guest at a new frame: directly, or through the trampoline."""
        cpu = self.cpu
        now_cs, now_ss, ds, es, fs, gs = cpu.get_many(("cs", "ss", "ds", "es", "fs", "gs"))
        if now_cs == cs and now_ss == ss:
            cpu.set("esp", esp)
            cpu.set("eflags", eflags)
            cpu.set("eip", eip)
            return
        cpu.load_frame(eip, cs, eflags, esp, ss, ds, es, fs, gs)

    # --- interrupts ------------------------------------------------------------------------
    def read_irq_enabled(self) -> int:
        assert self.lguest_data is not None
        if not self.mem.ok(self.lguest_data, 4):
            return 0
        return self.mem.read_u32(self.lguest_data + LguestData.IRQ_ENABLED)

    def _deliverable_irq(self) -> int | None:
        """The first pending irq the Guest has not blocked (None without lguest_data)."""
        if self.lguest_data is None or not self.irqs_pending:
            return None
        blocked = self.mem.read_u32(self.lguest_data + LguestData.BLOCKED_INTERRUPTS)
        pending = self.irqs_pending & ~blocked
        if not pending:
            return None
        return (pending & -pending).bit_length() - 1

    def _deliver_pending_interrupt(self) -> None:
        irq = self._deliverable_irq()
        if irq is not None:
            self.try_deliver_interrupt(irq)
        elif self.irqs_pending and self.lguest_data is not None:
            # Everything pending is blocked.  A Guest unmasks by clearing its bit in
            # blocked_interrupts, without a hypercall (Linux does), and may then spin
            # without ever trapping: look again soon, as the original Host's own timer
            # tick made it do.  (Missing this hung Linux at "Calibrating delay loop".)
            self.kicker.kick_later(RECHECK_SECONDS)

    def try_deliver_interrupt(self, irq: int) -> None:
        """§4.7, with irq_pending cleared when nothing more is deliverable (docs/abi.md)."""
        assert self.lguest_data is not None
        base = self.lguest_data
        if self.halted:
            if not self.mem.write_u32(base + LguestData.IRQ_ENABLED, abi.X86_EFLAGS_IF):
                self.kill("Re-enabling interrupts")
                return
            self.halted = False
        elif not self.read_irq_enabled() & abi.X86_EFLAGS_IF:
            self.mem.write_u32(base + LguestData.IRQ_PENDING, abi.X86_EFLAGS_IF)
            # Look again soon, as the original Host's own timer tick made it do.
            self.kicker.kick_later(RECHECK_SECONDS)
            return
        vector = abi.FIRST_EXTERNAL_VECTOR + irq
        if not self.idt.present(vector):
            return
        with self._irq_lock:
            self.irqs_pending &= ~(1 << irq)
        self.stats["interrupts"] += 1
        if self.tracer:
            self.tracer.irq(self, irq)
        deliver_interrupt(self, vector)
        if self.dead:
            return
        self.write_timestamp()
        if self._deliverable_irq() is None:
            self.mem.write_u32(base + LguestData.IRQ_PENDING, 0)

    def _sleep_until_interrupt(self) -> None:
        """HALT: sleep, without spinning, until an unblocked interrupt is pending."""
        while (self._deliverable_irq() is None and not self.dead and not self.stopped
               and not self._debugger_waiting()):
            self.stats["halted sleeps"] += 1  # each a wait on an event, never a poll
            self._wake.wait()
            self._wake.clear()

    def write_timestamp(self) -> None:
        assert self.lguest_data is not None
        sec, nsec = hypercalls.timestamp()
        if not self.mem.write(self.lguest_data + LguestData.TIME, struct.pack("<ii", sec, nsec)):
            self.kill("Writing timestamp")

    # --- debugging (the Launcher's gdb stub) -------------------------------------------------
    def attention(self) -> None:
        """Make the vCPU reach its next safe point soon, halted or not (any thread)."""
        self._wake.set()
        self.kicker.kick()

    def _debugger_waiting(self) -> bool:
        return self.debugger is not None and self.debugger.wants_stop

    def _interrupts_held(self) -> bool:
        """A step in progress holds interrupts, unless the Guest halted (it would never wake)."""
        return self.debugger is not None and self.debugger.holds_interrupts and not self.halted

    def peek_virtual(self, vaddr: int, size: int) -> bytes:
        """Guest memory at a Guest-virtual address, through the Guest's current tables.

        As much as is mapped to RAM from vaddr on (b"" if nothing): no fault for the
        Guest, no ACCESSED or DIRTY bit set, never the Switcher's or a device's pages.
        """
        data = b""
        while len(data) < size:
            gpa = self.peek_virtual_pa(vaddr + len(data))
            if gpa is None:
                break
            chunk = min(size - len(data), abi.PAGE_SIZE - (gpa & 0xFFF))
            data += self.mem.ram[gpa:gpa + chunk]
        return data

    def poke_virtual(self, vaddr: int, data: bytes) -> bool:
        """Write into Guest RAM at a Guest-virtual address (all of it, or nothing)."""
        spans = []
        done = 0
        while done < len(data):
            gpa = self.peek_virtual_pa(vaddr + done)
            if gpa is None:
                return False
            chunk = min(len(data) - done, abi.PAGE_SIZE - (gpa & 0xFFF))
            spans.append((gpa, data[done:done + chunk]))
            done += chunk
        for gpa, chunk in spans:
            self.mem.ram[gpa:gpa + len(chunk)] = chunk
        self.cpu.forget_code()  # the emulator may have translated the old bytes
        return True

    def peek_virtual_pa(self, vaddr: int) -> int | None:
        """The Guest-physical RAM address behind a Guest-virtual one, without side effects."""
        return self.pages.peek(vaddr) if 0 <= vaddr < abi.SWITCHER_ADDR else None

    # --- tracing ---------------------------------------------------------------------------
    def trace_hcall(self, args: tuple[int, ...], queued: bool) -> None:
        if self.tracer:
            self.tracer.hcall(self, args, queued)
