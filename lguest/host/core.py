"""The Host's core: one Guest, its run loop, and the API the Launcher drives
(mirrors drivers/lguest/core.c and lguest_user.c, and the trap half of x86/core.c).

This is /dev/lguest (spec §8.2) as Python calls: the Launcher creates a `Guest`
with its RAM and entry point, may raise interrupts, read and set registers and
inject traps, and calls `run()`, which returns only when the Guest dies, asks to
be restarted or is stopped; then `close()` releases the emulator and the RAM.
Port I/O reaches the Launcher through the `bus` it handed us; the Host itself
knows nothing of devices, files or terminals.

What it owns: the Guest's life (kill, restart, close), the run loop, what each
return from the Switcher means (`handle_trap`), interrupt delivery policy and
HALT, and the Launcher's and the debugger's ways in.  The parts it is built
from each get only what they need: memory and the kill callback (page tables,
IDT, segments), the page tables and the port bus (the Switcher).
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
from lguest.host.faultaddr import fault_address
from lguest.host.interrupts import Idt, NativeGates, deliver_interrupt, deliver_trap, direct_trap
from lguest.host.memory import GuestMemory, hex32
from lguest.host.native_hypercalls import only_counts, serve_hypercalls
from lguest.host.native_irqs import NativeIrqs
from lguest.host.page_tables import PageTables
from lguest.host.segments import Segments
from lguest.host.state import GuestState, capture, restore
from lguest.host.switcher import Exit, ExitKind, PortBus, Switcher


class Tracer(Protocol):
    """Receives one call per event when the Launcher asked for --trace.

    One whose `only_counts` is True (--stats=json's census) lets the common hypercalls
    be served in C unseen, and is told how many of each there were (`count_served`).
    """

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


# tour:H.10 One Guest, built from narrow parts
# The Host's half of lguest was a kernel module; ours is this package, and a `Guest` is what
# /dev/lguest handed the Launcher: one Guest with one virtual CPU.  The Launcher builds it
# with the Guest's RAM, the kernel's entry point and the port bus its devices answer on.  It
# is put together from parts that each get only what they need: the RAM behind a
# bounds-checked `GuestMemory`, the shadow page tables (memory and a way to kill the Guest),
# the Switcher (which owns the emulated CPU, and asks the page tables on every TLB miss and
# the port bus on every `in`/`out`), the Guest's IDT and GDT, and the clock.  The Guest
# starts as lguest's did (§3.4): at the kernel's entry point, in ring 1, flat segments,
# paging in "linear" mode until the kernel installs tables of its own. Nothing is wired in
# after construction, and `close()` gives the emulator back at once.
class Guest:
    """One Guest (lguest's `struct lguest` with its single `struct lg_cpu`)."""

    def __init__(self, ram: mmap.mmap, mem_size: int, start: int, bus: PortBus, *,
                 syscall_vector: int = abi.SYSCALL_VECTOR, tracer: Tracer | None = None,
                 pae: bool = False, native: bool | None = None) -> None:
        self.dead: str | None = None
        self.stopped = False  # the Launcher asked run() to return (stop_run)
        self.restart = False
        self.shutdown_how: int | None = None
        self.memory = GuestMemory(ram, mem_size, self.kill)
        self.syscall_vector = syscall_vector
        self.tracer = tracer
        self.debugger: Debugger | None = None
        self._ram_anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(ram)
        self.pages = PageTables(self.memory, self.kill, pae)
        self.switcher = Switcher(ctypes.addressof(self._ram_anchor), mem_size, self.pages, bus,
                                 self._direct_trap, native=native)
        self.doorbell = self.switcher.doorbell
        self.idt = Idt(self.kill, self._gate_changed)
        self.segments = Segments(self.memory, self.kill, self.switcher)
        self.clock = Clock(self.interrupt)
        # The common hypercalls served in C (native_hypercalls.py), or None: all in Python.
        self.native_hcalls = serve_hypercalls(self.switcher, ctypes.addressof(self._ram_anchor),
                                              mem_size, tracer)
        if self.native_hcalls is not None:
            self.pages.let_native_set_ptes(self.native_hcalls)
            self.segments.let_native_load_tls(self.native_hcalls)
        # lguest_data and what INIT read from it
        self._lguest_data: int | None = None
        self.noirq_iret = 0
        self._next_hcall = 0
        # vCPU state the Host keeps
        self.hcall_pending = False
        self.halted = False
        self._ts = 0  # TS's flag, on the pure-Python path (else native_hcalls has it)
        self._kernel_stack = (0, 0)  # SET_STACK's ss1, esp1: where traps from user mode land
        self._irqs_pending = 0  # the pure-Python Host's; on the native path, C's (native_irqs)
        self.stats: Counter[str] = Counter()  # hypercalls, reflected traps, interrupts (--stats)
        self._irq_lock = threading.Lock()
        self._wake = threading.Event()
        self._at_safe_point: list[Callable[[Guest], None]] = []  # call_at_safe_point's, in order
        self._initial_state(start)
        # The gates the emulated CPU may deliver through itself (native path only).
        self.native_gates = NativeGates.for_guest(self, ctypes.addressof(self._ram_anchor))
        self.switcher.serve_traps(self.native_gates)
        # The clock's and the devices' irqs, delivered by the CPU itself (native path only).
        self.native_irqs = NativeIrqs.for_guest(self, ctypes.addressof(self._ram_anchor), self.doorbell.ring)
        if self.native_irqs is not None:
            self.native_irqs.deliver_here(only_counts(tracer))
            if self.native_hcalls is not None:
                self.native_hcalls.watch_irqs(self.native_irqs.pending_address)
        self.switcher.cpu_page_fault = self._cpu_page_fault

    def _initial_state(self, start: int) -> None:
        """§3.4: ring 1, flat kernel segments, everything else zero."""
        for reg in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
            self.switcher.set(reg, 0)
        self.switcher.load_frame(start, abi.KERNEL_CS, abi.INITIAL_EFLAGS, 0, abi.KERNEL_DS,
                            abi.KERNEL_DS, abi.KERNEL_DS, 0, 0)

    def close(self) -> None:
        """Release the emulator and our hold on the RAM (after run(); idempotent).

        Without this a dead Guest's engine lived until the cycle collector found
        it, and a Guest restarting in a loop grew by an engine every boot.  The
        Launcher owns the RAM itself and unmaps it after this.
        """
        self.clock.close()
        if self.native_irqs is not None:
            self.native_irqs.close()
        self.switcher.close()
        self._ram_anchor = None

    # --- what C shares: the async ring, the Host's cursor, TS, SET_STACK's stack (native_hypercalls.py)
    @property
    def lguest_data(self) -> int | None:
        return self._lguest_data

    @lguest_data.setter
    def lguest_data(self, gpa: int | None) -> None:
        self._lguest_data = gpa
        if self.native_hcalls is not None:
            self.native_hcalls.start(gpa)

    @property
    def next_hcall(self) -> int:
        return self._next_hcall if self.native_hcalls is None else self.native_hcalls.next_hcall

    @next_hcall.setter
    def next_hcall(self, n: int) -> None:
        if self.native_hcalls is None:
            self._next_hcall = n
        else:
            self.native_hcalls.next_hcall = n

    @property
    def ts(self) -> int:
        """The Guest's last TS argument: nonzero, #NM on its next FPU use is its own."""
        return self._ts if self.native_hcalls is None else self.native_hcalls.task_switched

    @ts.setter
    def ts(self, ts: int) -> None:
        if self.native_hcalls is None:
            self._ts = ts
        else:
            self.native_hcalls.task_switched = ts

    @property
    def ss1(self) -> int:
        return self._shared_kernel_stack[0]

    @property
    def esp1(self) -> int:
        return self._shared_kernel_stack[1]

    @property
    def _shared_kernel_stack(self) -> tuple[int, int]:
        return self._kernel_stack if self.native_hcalls is None else self.native_hcalls.kernel_stack

    # --- death ---------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """kill_guest: the first reason is the one that counts.  Any thread may call it."""
        if self.dead is None:
            self.dead = reason
        self._wake.set()
        self.doorbell.ring()

    # --- the Launcher's API (LHREQ_*) ----------------------------------------------------
    def interrupt(self, irq: int) -> bool:
        """LHREQ_IRQ: mark irq pending and kick the vCPU.  Safe from any thread."""
        if not 0 <= irq < abi.LGUEST_IRQS:
            return False
        if self.native_irqs is not None and self._native_irqs_allowed():
            asked = self.native_irqs.raise_irq(irq)
        else:
            self._add_pending(1 << irq)
            asked = False
        self._wake.set()
        if asked:
            self.doorbell.ring_at_entry()  # a run in progress was asked by the raise itself
        else:
            self.doorbell.ring()
        return True

    @property
    def irqs_pending(self) -> int:
        """The irqs raised and not yet delivered, a bit each (one copy: C's, natively)."""
        return self.native_irqs.pending if self.native_irqs is not None else self._irqs_pending

    @irqs_pending.setter
    def irqs_pending(self, bits: int) -> None:
        """Only where no other thread raises: a state being restored."""
        if self.native_irqs is None:
            with self._irq_lock:
                self._irqs_pending = bits
            return
        self.native_irqs.clear(~bits & 0xFFFFFFFF)
        self._add_pending(bits)

    def _add_pending(self, bits: int) -> None:
        if self.native_irqs is not None:
            for irq in range(abi.LGUEST_IRQS):
                if bits >> irq & 1:
                    self.native_irqs.raise_irq(irq)
            return
        with self._irq_lock:
            self._irqs_pending |= bits

    def _take_pending(self, bits: int) -> None:
        if self.native_irqs is not None:
            self.native_irqs.clear(bits)
            return
        with self._irq_lock:
            self._irqs_pending &= ~bits

    def _native_irqs_allowed(self) -> bool:
        """A debugger stepping must see every interrupt arrive in the run loop."""
        if self.debugger is not None:
            self.native_irqs.deliver_here(False)  # for good, like the CPU's other deliveries
            return False
        return True

    def stop_run(self) -> None:
        """Make run() return promptly, the Guest unharmed and no kill reason given.

        For the Launcher's signals and escape keys, from any thread: a halted vCPU
        wakes, a running one leaves the emulator at its next block.
        """
        self.stopped = True
        self._wake.set()
        self.doorbell.ring()

    def call_at_safe_point(self, action: Callable[[Guest], None]) -> None:
        """From any thread: have the vCPU call action(guest) at its next safe point,
        between two runs, where the Guest's state is whole (a snapshot is taken there);
        then the Guest carries on.  A halted vCPU wakes for it."""
        with self._irq_lock:
            self._at_safe_point.append(action)
        self.attention()

    def save_state(self) -> GuestState:
        """The Guest's state as data (only from an action at a safe point)."""
        return capture(self)

    def restore_state(self, state: GuestState) -> None:
        """Make this Guest, built but never run, the one `state` was saved from.

        The Launcher has filled RAM already; raises state.BadState if it cannot be.
        """
        restore(self, state)

    def get_reg(self, offset: int) -> int:
        """LHREQ_GETREG: a register by its offset in i386 `struct pt_regs`."""
        return self.switcher.get(PT_REG_NAMES[offset])

    def set_reg(self, offset: int, value: int) -> bool:
        """LHREQ_SETREG: only the general registers, eip and esp may be set."""
        if offset not in abi.SETTABLE_PT_REGS:
            return False
        self.switcher.set(PT_REG_NAMES[offset], value)
        return True

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Give a Launcher device window (page-aligned) to the Guest's physical map."""
        self.switcher.map_mmio(gpa, size, read, write)
        self.pages.add_device_window(gpa, size)

    def inject_trap(self, num: int, errcode: int = 0) -> bool:
        """LHREQ_TRAP: deliver a trap into the Guest now; False if it has no handler."""
        return deliver_trap(self, num, errcode)

# tour:H.20 The run loop
# This is lguest's run_guest(), and the heart of the Host.  Each turn: answer the doorbell
# (other threads rang it to get our attention), run the hypercall the Guest left pending (it
# trapped with `int $0x1f` last time round), let a debugger look, then deliver an interrupt
# if one is pending and the Guest can take it.  A halted Guest sleeps here until an
# interrupt is worth waking for.  Otherwise we switch into the Guest: flush the emulator's
# TLB if the page tables said it went stale, and run the CPU until something brings it back
# (`_run_guest`).  What came back is handled, and round we go.  The loop only ends when the
# Guest is dead (killed, or shut down), or the Launcher asked it to stop.
    def run(self) -> RunResult:
        """The run loop (§4.2): returns when the Guest is dead or wants a restart."""
        try:
            while not self.dead:
                self.doorbell.answered()
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
                if self._at_safe_point:
                    self._run_safe_point_actions()
                if not self._interrupts_held():
                    self._deliver_pending_interrupt()
                if self.dead:
                    break
                if self.halted:
                    self._sleep_until_interrupt()
                    continue
                self.handle_trap(self._run_guest())
        finally:
            self.clock.close()
            self.doorbell.close()
            if self.native_irqs is not None:
                self.native_irqs.close()
        return RunResult(self.dead or "", self.restart, self.shutdown_how)

    def _run_safe_point_actions(self) -> None:
        with self._irq_lock:
            actions, self._at_safe_point = self._at_safe_point, []
        for action in actions:
            action(self)

    def _run_guest(self) -> Exit:
        """One world switch: into the Guest until it comes back (lguest_arch_run_guest)."""
        if self.pages.take_tlb_flush():
            self.switcher.flush_tlb()
        exit_ = self.switcher.run()
        hypercalls.count_served_in_c(self)
        self._count_irqs_delivered_in_c()
        return exit_

    def _count_irqs_delivered_in_c(self) -> None:
        """--stats counts every interrupt, also those the CPU delivered (native_irqs)."""
        if self.native_irqs is None:
            return
        for irq, count in self.native_irqs.take_counts():
            self.stats["interrupts"] += count
            if self.tracer is not None:
                for _ in range(count):
                    self.tracer.irq(self, irq)

    def _gate_changed(self, vector: int) -> None:
        if self.native_gates is not None:
            self.native_gates.update(vector)
        if self.native_irqs is not None:
            self.native_irqs.update(vector)
        self._let_c_refuse()

    def gates_changed(self) -> None:
        """INIT, or a restored state: what every gate's delivery depends on changed."""
        if self.native_gates is not None:
            self.native_gates.update_all()
        if self.native_irqs is not None:
            self.native_irqs.update_all()
        self._let_c_refuse()

    def _let_c_refuse(self) -> None:
        """fills.c raises the plain refusals as the Guest's #PF itself where the Python
        hook would have the CPU raise them (`_cpu_page_fault`), given the exact address."""
        answers, exact = self.switcher.fill_answers, self.switcher.exact_fills
        if answers is not None:
            answers.refuse_here(self._cr2_for_the_cpu() or 0, exact is not None and exact.installed)

    def set_kernel_stack(self, ss: int, esp: int) -> None:
        """SET_STACK's stack: where traps from user mode land (ours, and the CPU's TSS)."""
        if self.native_hcalls is None:
            self._kernel_stack = ss, esp
        else:
            self.native_hcalls.kernel_stack = ss, esp
        self.switcher.set_kernel_stack(ss, esp)

    @property
    def traps_reflected(self) -> int:
        """Traps reflected into the Guest, by the Host or by the CPU itself (--stats)."""
        native = self.native_gates.reflected if self.native_gates is not None else 0
        return self.stats["reflected traps"] + native

    def _direct_trap(self, vector: int, errcode: int, software: bool) -> bool:
        """The Switcher's fast path, from inside its interrupt hook (§4.4)."""
        return direct_trap(self, vector, errcode, software)

    # --- traps ---------------------------------------------------------------------------
# tour:H.30 What each return from the Guest means
# lguest_arch_handle_trap: the Switcher tells us why the CPU stopped.  A kick (the doorbell)
# means nothing by itself: the loop goes round and delivers what was pending. A page fault
# the page tables refused is the Guest's to handle ("A page fault, back to the Guest").  A
# trap with vector 0x1f from ring 1 is a hypercall: it is only noted here, and the next turn
# of the loop runs it, exactly as lguest did.  An `int n` the Guest's gate forbids at the
# caller's ring becomes the #GP a real CPU would raise.  A #GP(0) may be an instruction we
# finish for the Guest (a stray `cli`); a #NM it did not ask for (TS clear) is ours to
# ignore.  Everything else goes back to the Guest's own handler: reflected ("Reflecting a
# trap into the Guest"). Trap 256 means the Switcher itself failed to enter the Guest: that
# kills it.
    def handle_trap(self, exit_: Exit) -> None:
        """lguest_arch_handle_trap (§4.3): decide what each return to the Host means."""
        if self.dead:
            return
        if self.tracer:
            self.tracer.trap(self, exit_)
        if exit_.kind is ExitKind.KICKED:
            return
        if exit_.kind is ExitKind.PAGE_FAULT:
            self._reflect_page_fault(exit_)
            return
        num, errcode = exit_.trapnum, exit_.errcode
        if num == abi.TRAPNUM_IN_SWITCHER:
            self.kill(f"unhandled trap {num} at {hex32(self.switcher.get('eip'))} ({hex32(errcode)})")
        elif num == abi.LGUEST_TRAP_ENTRY and self.switcher.cpl <= abi.GUEST_PL:
            self.hcall_pending = True
        elif exit_.software and self.switcher.cpl > self.idt.software_int_dpl(num, self.syscall_vector):
            # `int n` through a gate the caller may not use: #GP with the IDT error code.
            self.switcher.set("eip", self.switcher.get("eip") - exit_.insn_len)
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
        eip = self.switcher.get("eip")
        if not deliver_trap(self, num, errcode) and not self.dead:
            detail = errcode if cr2 is None else cr2
            self.kill(f"unhandled trap {num} at {hex32(eip)} ({hex32(detail)})")

# tour:H.130 A page fault, back to the Guest
# When demand_page could not fix a miss ("A page fault: from a TLB miss to demand_page"),
# the fault is the Guest's: the Switcher left the emulator with the page and the #PF error
# code.  A real CPU would also have put the faulting address in CR2.  The Guest cannot read
# CR2 (it is a privileged register), so lguest writes it into lguest_data.cr2, where the
# Guest's fault handler reads it first.  The emulator only told us the page, so the exact
# byte is worked out by decoding the faulting instruction ("Workaround: the exact CR2"),
# fetched through the Guest's own page tables with `peek_virtual`.  Then the #PF is
# reflected like any trap.  On the native path most of these never leave the emulator: the
# emulator puts EIP back on the faulting instruction before it asks the fill hook, so the
# Host tells cr2 right there, from the same code, and has the CPU raise the #PF and deliver
# it through gate 14 itself ("Traps the emulated CPU delivers itself").
    def _reflect_page_fault(self, exit_: Exit) -> None:
        """A fault demand paging could not fix (§4.3, trap 14): the Guest's to handle.

        Before INIT there is no lguest_data to tell cr2 in, and no IDT either:
        the fault is simply unhandled, as in lguest.
        """
        cr2 = exit_.cr2 if exit_.cr2 is not None else self._tell_cr2(exit_)
        if cr2 is not None:
            self.reflect(abi.Trap.PF, exit_.errcode, cr2)

    def _tell_cr2(self, exit_: Exit) -> int | None:
        """The exact faulting address, written where the Guest's handler reads it
        (lguest_data.cr2, after INIT); None if the Guest died of it."""
        cr2 = self.fault_address(exit_)
        if self.lguest_data is not None and not self.memory.write_u32(self.lguest_data + LguestData.CR2, cr2):
            self.kill("Writing cr2")
            return None
        return cr2

    def _cr2_for_the_cpu(self) -> int | None:
        """Where cr2 is told when the CPU raises and delivers the Guest's page faults itself
        (interrupts.c, through gate 14, marked for it); None: they leave the emulator (and
        a cr2 outside RAM kills, "Writing cr2", on that path)."""
        gates = self.native_gates
        if gates is None or not gates.cpu_raises_fault() or self.lguest_data is None:
            return None
        cr2 = self.lguest_data + LguestData.CR2
        return cr2 if self.memory.ok(cr2, 4) else None

    def _cpu_page_fault(self, exit_: Exit) -> int | None:
        """From inside the fill hook: may the CPU raise this fault and deliver it itself
        (`_cr2_for_the_cpu`)?  Then cr2 is told now, at the precise EIP the emulator
        restored before asking, and returned; None: it leaves the emulator."""
        return self._tell_cr2(exit_) if self._cr2_for_the_cpu() is not None else None

    def fault_address(self, exit_: Exit) -> int:
        """The exact faulting address: the emulator's, where it says (the native path),
        else worked out from the faulting instruction (its hook only names the page)."""
        if exit_.exact is not None:
            return exit_.exact
        eip = self.switcher.get("eip")
        code = self.peek_virtual(eip, INSN_MAX)
        return fault_address(exit_.address, eip, code, exit_.fetch, self.switcher.get,
                             lambda seg: self.segments.base(self.switcher.get(seg)))

    def _emulate_insn(self) -> bool:
        """A #GP(0) at ring 1 the Host can finish for the Guest (§7.1): only `cli`.

        Port I/O never gets here (the Switcher passes it to the bus directly);
        a `cli` left in non-paravirtualised code is simply skipped.
        """
        if self.switcher.cpl != abi.GUEST_PL:
            return False
        eip = self.switcher.get("eip")
        gpa = self.pages.guest_pa(eip)
        if gpa is None or not self.memory.ok(gpa, 1):
            return False
        if self.memory.ram[gpa] == abi.OPCODE_CLI:
            self.switcher.set("eip", eip + 1)
            return True
        return False

    def enter(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """Resume the Guest at a new frame: directly, or through the trampoline."""
        switcher = self.switcher
        now_cs, now_ss, ds, es, fs, gs = switcher.get_many(("cs", "ss", "ds", "es", "fs", "gs"))
        if now_cs == cs and now_ss == ss:
            switcher.set_many(("esp", "eflags", "eip"), (esp, eflags, eip))
            return
        switcher.load_frame(eip, cs, eflags, esp, ss, ds, es, fs, gs)

    # --- interrupts ------------------------------------------------------------------------
    def read_irq_enabled(self) -> int:
        assert self.lguest_data is not None
        if not self.memory.ok(self.lguest_data, 4):
            return 0
        return self.memory.read_u32(self.lguest_data + LguestData.IRQ_ENABLED)

    def _deliverable_irq(self) -> int | None:
        """The first pending irq the Guest has not blocked (None without lguest_data)."""
        if self.lguest_data is None or not self.irqs_pending:
            return None
        blocked = self.memory.read_u32(self.lguest_data + LguestData.BLOCKED_INTERRUPTS)
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
            self.doorbell.ring_later(RECHECK_SECONDS)

# tour:H.140 When an interrupt may be delivered
# The Guest never runs `cli` or `sti`: it says whether it takes interrupts in
# lguest_data.irq_enabled, and which lines it has masked in blocked_interrupts (§4.7).
# Between runs the loop picks the lowest pending, unblocked irq.  If interrupts are off the
# Host only sets irq_pending, the Guest's hint to make a SEND_INTERRUPTS hypercall when it
# turns them back on, and looks again in a millisecond (a Guest may spin with interrupts
# enabled and never trap again).  A halted Guest is woken instead, with interrupts on.
# Otherwise the interrupt goes through the Guest's IDT ("An interrupt, through the same
# gates"), the clock in lguest_data is refreshed, and irq_pending is cleared once nothing
# more is waiting.
    def try_deliver_interrupt(self, irq: int) -> None:
        """§4.7, with irq_pending cleared when nothing more is deliverable (docs/abi.md)."""
        assert self.lguest_data is not None
        base = self.lguest_data
        if self.halted:
            if not self.memory.write_u32(base + LguestData.IRQ_ENABLED, abi.X86_EFLAGS_IF):
                self.kill("Re-enabling interrupts")
                return
            self.halted = False
        elif not self.read_irq_enabled() & abi.X86_EFLAGS_IF:
            self.memory.write_u32(base + LguestData.IRQ_PENDING, abi.X86_EFLAGS_IF)
            # Look again soon, as the original Host's own timer tick made it do.
            self.doorbell.ring_later(RECHECK_SECONDS)
            return
        vector = abi.FIRST_EXTERNAL_VECTOR + irq
        if not self.idt.present(vector):
            return
        self._take_pending(1 << irq)
        self.stats["interrupts"] += 1
        if self.tracer:
            self.tracer.irq(self, irq)
        deliver_interrupt(self, vector)
        if self.dead:
            return
        self.write_timestamp()
        if self._deliverable_irq() is None:
            self.memory.write_u32(base + LguestData.IRQ_PENDING, 0)

# tour:H.150 HALT: the Guest is idle
# The HALT hypercall only sets `halted`; here the vCPU thread sleeps on an event until there
# is an interrupt the Guest would take, it was killed or stopped, or a debugger wants it.
# It never polls: every sleep is one wait, and the Host counts them, which is how the tests
# tell an idle Guest from a busy one without looking at a clock.
    def _sleep_until_interrupt(self) -> None:
        """HALT: sleep, without spinning, until an unblocked interrupt is pending."""
        while (self._deliverable_irq() is None and not self.dead and not self.stopped
               and not self._debugger_waiting() and not self._at_safe_point):
            self.stats["halted sleeps"] += 1  # each a wait on an event, never a poll
            self._wake.wait()
            self._wake.clear()

    def write_timestamp(self) -> None:
        assert self.lguest_data is not None
        sec, nsec = hypercalls.timestamp()
        if not self.memory.write(self.lguest_data + LguestData.TIME, struct.pack("<ii", sec, nsec)):
            self.kill("Writing timestamp")

    # --- debugging (the Launcher's gdb stub) -------------------------------------------------
    def attention(self) -> None:
        """Make the vCPU reach its next safe point soon, halted or not (any thread)."""
        self._wake.set()
        self.doorbell.ring()

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
            data += self.memory.ram[gpa:gpa + chunk]
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
            self.memory.ram[gpa:gpa + len(chunk)] = chunk
        self.switcher.forget_code()  # the emulator may have translated the old bytes
        return True

    def peek_virtual_pa(self, vaddr: int) -> int | None:
        """The Guest-physical RAM address behind a Guest-virtual one, without side effects."""
        return self.pages.peek(vaddr) if 0 <= vaddr < abi.SWITCHER_ADDR else None

    # --- tracing ---------------------------------------------------------------------------
    def trace_hcall(self, args: tuple[int, ...], queued: bool) -> None:
        if self.tracer:
            self.tracer.hcall(self, args, queued)
