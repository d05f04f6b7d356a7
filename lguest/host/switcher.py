"""The Switcher: entering and leaving the Guest (lguest's x86/switcher_32.S and
the run half of x86/core.c).

The original Switcher was a page of assembly mapped at the top of every address
space: it saved the Host, loaded the Guest's segments and page tables, and `iret`ed
into the Guest; any trap brought the CPU back through it to the Host.  Here the CPU
is Unicorn (QEMU's TCG), and the two halves become:

* entering: a tiny ring-0 trampoline in a Host-only page at SWITCHER_ADDR pops the
  Guest's data segments and `iret`s with the Guest's frame, so the emulated CPU's
  own privilege checks decide what ring the Guest lands in;
* leaving: Unicorn hooks.  Every exception and `int n` stops in the interrupt hook,
  port I/O arrives in the in/out hooks, invalid opcodes in the invalid-instruction
  hook, and every TLB miss asks the Host's page tables (the TLB is our shadow).

What it owns: the engine, the Switcher's four pages (with the real GDT, IDT and
TSS the emulated CPU reads), the Guest's registers (one batch read into Unicorn's C
API per stop, answered from that copy until the CPU runs again), the hooks (all
installed in `_install_hooks`), and the workarounds that keep the emulator honest:
CPU state the emulator leaves half-done is repaired through calibration.py (the
only module touching its private state), other threads reach the vCPU through
doorbell.py, fixed port reads are answered and quiet port writes queued in C
(ports.py) on the native path (the queue reaches the Launcher before any other port
or device access and whenever the emulator stops: `_drain_port_writes`), and

* Unicorn's `iret` loads EFLAGS.VM at any CPL, where a real CPU only does so at
  CPL 0 (`helper_ret_protected` jumps to `return_to_vm86` before looking at the
  CPL).  No hook sees an `iret`, so the wrong entry cannot be undone at the
  instruction itself; the Host refuses virtual-8086 mode the first moment it sees
  the CPU instead (`_refuse_vm86`).
* Its own hooks: a Python exception inside a callback would be turned by ctypes
  into a default answer (a refused fill, a zero read) that looks like the
  Guest's fault.  Every hook is guarded (`_guard`): the exception stops the
  emulator and `run()` raises it on the vCPU thread.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import operator
import struct
import time
from collections.abc import Callable
from enum import Enum, auto
from typing import NamedTuple, Protocol

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_EXCEPTION,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_WRITE,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_IN_CFUNC, HOOK_INSN_OUT_CFUNC
from unicorn.unicorn_py3.unicorn import (
    HOOK_INSN_INVALID_CFUNC,
    HOOK_INTR_CFUNC,
    HOOK_TLB_FILL_CFUNC,
    uc_hook_h,
    uclib,
)
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EAX,
    UC_X86_REG_EBP,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDI,
    UC_X86_REG_EDX,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_ESI,
    UC_X86_REG_ESP,
    UC_X86_REG_FP0,
    UC_X86_REG_FP1,
    UC_X86_REG_FP2,
    UC_X86_REG_FP3,
    UC_X86_REG_FP4,
    UC_X86_REG_FP5,
    UC_X86_REG_FP6,
    UC_X86_REG_FP7,
    UC_X86_REG_FPCW,
    UC_X86_REG_FPSW,
    UC_X86_REG_FPTAG,
    UC_X86_REG_FS,
    UC_X86_REG_GDTR,
    UC_X86_REG_GS,
    UC_X86_REG_IDTR,
    UC_X86_REG_MXCSR,
    UC_X86_REG_SS,
    UC_X86_REG_TR,
    UC_X86_REG_XMM0,
    UC_X86_REG_XMM1,
    UC_X86_REG_XMM2,
    UC_X86_REG_XMM3,
    UC_X86_REG_XMM4,
    UC_X86_REG_XMM5,
    UC_X86_REG_XMM6,
    UC_X86_REG_XMM7,
)

from lguest import abi
from lguest.host.calibration import (
    EngineCpu,
    SavedContext,
    close_engine,
    context_layout,
    engine_cpu,
    quiet_exit_checks,
    restore_exit_checks,
    segment_caches,
)
from lguest.host.doorbell import Doorbell
from lguest.host.exact_fill import ExactFills
from lguest.host.fills import FillAnswers
from lguest.host.native import enabled as native_by_default
from lguest.host.ports import FixedPorts, QuietWrites
from lguest.host.segments import segment_descriptor
from lguest.host.trap_hook import TrapHook

# tour:S.10 The Switcher's pages and the trampoline
# Last, the part lguest called the Bit of Despair.  Its Switcher was a few pages of assembly
# mapped at the same high address (0xFFC00000) in the Host and in every Guest: it saved the
# Host's registers, loaded the Guest's segments, GDT, IDT and page tables, and `iret`ed into
# the Guest; a trap came back through the same pages.  Ours keeps the address and four
# pages: a code page holding a seven-byte trampoline (pop the Guest's four data segments,
# `iret`), a page emulation is told to stop at and never reaches, a ring-0 stack holding the
# Guest's entry frame, and the GDT, IDT and TSS.  The Guest's kernel may read some of them,
# its user code none, and nothing the Guest does maps them: the TLB-fill hook answers for
# them before the Guest's tables are even asked.

# The Switcher's pages, at the same virtual and (emulator-)physical address.
CODE_PAGE = abi.SWITCHER_ADDR  # the trampoline: kernel read+exec
STOP_PAGE = abi.SWITCHER_ADDR + 0x1000  # `until` address for emu_start: never executed
REGS_PAGE = abi.SWITCHER_ADDR + 0x2000  # ring-0 stack holding the entry frame: kernel rw
STATE_PAGE = abi.SWITCHER_ADDR + 0x3000  # GDT, IDT and TSS: kernel read-only
SWITCHER_PAGES = 4
GDT_ADDR = STATE_PAGE  # 32 entries: 0x100 bytes
TSS_ADDR = STATE_PAGE + 0x100  # 104 bytes
IDT_ADDR = STATE_PAGE + 0x400  # 256 gates: 0x800 bytes, to the page's last quarter
TSS_ESP1, TSS_SS1 = 12, 16  # where a trap from ring 3 finds the ring-1 stack
SEGMENT_CS, SEGMENT_SS, SEGMENT_TR = 1, 2, 7  # QEMU's order of its segment caches

# pop %gs; pop %fs; pop %es; pop %ds; iret
TRAMPOLINE = bytes([0x0F, 0xA9, 0x0F, 0xA1, 0x07, 0x1F, 0xCF])
# Where a kernel-mode entry without a frame starts on the native path: a `hlt`
# never run, whose block's doorbell hook sends the vCPU on to the Guest's EIP.
ENTRY_GATE = CODE_PAGE + 0x800
ENTRY_FRAME_REGS = ("gs", "fs", "es", "ds", "eip", "cs", "eflags", "esp", "ss")  # popped in this order
ENTRY_FRAME = struct.Struct(f"<{len(ENTRY_FRAME_REGS)}I")
ENTRY_FRAME_ADDR = REGS_PAGE + abi.PAGE_SIZE - ENTRY_FRAME.size

GENERAL_REGS = {
    "eax": UC_X86_REG_EAX,
    "ebx": UC_X86_REG_EBX,
    "ecx": UC_X86_REG_ECX,
    "edx": UC_X86_REG_EDX,
    "esi": UC_X86_REG_ESI,
    "edi": UC_X86_REG_EDI,
    "ebp": UC_X86_REG_EBP,
    "esp": UC_X86_REG_ESP,
    "eip": UC_X86_REG_EIP,
    "eflags": UC_X86_REG_EFLAGS,
}
SEGMENT_REGS = {
    "cs": UC_X86_REG_CS,
    "ss": UC_X86_REG_SS,
    "ds": UC_X86_REG_DS,
    "es": UC_X86_REG_ES,
    "fs": UC_X86_REG_FS,
    "gs": UC_X86_REG_GS,
}
ALL_REGS = GENERAL_REGS | SEGMENT_REGS
SLOT = {name: slot for slot, name in enumerate(ALL_REGS)}  # where each is in the Switcher's copy
_PICKERS: dict[tuple[str, ...], Callable[[ctypes.Array], tuple[int, ...]]] = {}  # `get_many`'s, per tuple


def _picker(regs: tuple[str, ...]) -> Callable[[ctypes.Array], tuple[int, ...]]:
    """What picks these registers out of the Switcher's copy, in one C call."""
    if len(regs) == 1:
        slot = SLOT[regs[0]]
        return lambda values: (values[slot],)
    return operator.itemgetter(*(SLOT[reg] for reg in regs))


MAX_SET = 3  # registers `set_many` writes in one call (a trap return's esp, eflags, eip)
# The FPU and SSE state by name, for snapshots: Unicorn's register ids are the same in
# every build, where its saved-context blob is not.  FP0..FP7 are the physical x87
# registers (mantissa, exponent), independent of the stack top FPSW holds.
FPU_CONTROL_REGS = {"fpcw": UC_X86_REG_FPCW, "fpsw": UC_X86_REG_FPSW, "fptag": UC_X86_REG_FPTAG,
                    "mxcsr": UC_X86_REG_MXCSR}
X87_REGS = (UC_X86_REG_FP0, UC_X86_REG_FP1, UC_X86_REG_FP2, UC_X86_REG_FP3, UC_X86_REG_FP4,
            UC_X86_REG_FP5, UC_X86_REG_FP6, UC_X86_REG_FP7)
XMM_REGS = (UC_X86_REG_XMM0, UC_X86_REG_XMM1, UC_X86_REG_XMM2, UC_X86_REG_XMM3, UC_X86_REG_XMM4,
            UC_X86_REG_XMM5, UC_X86_REG_XMM6, UC_X86_REG_XMM7)

# Unicorn's TLB answers: which kinds of access an installed translation allows.
PERM_EXEC = UC_PROT_READ | UC_PROT_EXEC
PERM_READ = UC_PROT_READ
PERM_WRITE = UC_PROT_READ | UC_PROT_WRITE
# What the Guest kernel may do with each Switcher page (user code: nothing).
SWITCHER_PERMS = {CODE_PAGE: PERM_EXEC, REGS_PAGE: PERM_WRITE, STATE_PAGE: PERM_READ}


def _unconverted(function: ctypes._CFuncPtr) -> ctypes._CFuncPtr:
    """One of Unicorn's C functions, called without ctypes converting each argument
    (half the cost of a call): callers pass ctypes objects only, never a Python int."""
    return ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(function, ctypes.c_void_p).value)


_reg_read_batch = _unconverted(uclib.uc_reg_read_batch)
_reg_write_batch = _unconverted(uclib.uc_reg_write_batch)
_emu_start = _unconverted(uclib.uc_emu_start)
_emu_stop = _unconverted(uclib.uc_emu_stop)
_NO_LIMIT = ctypes.c_uint64(0)  # emu_start's timeout and instruction count
_STOP_AT = ctypes.c_uint64(STOP_PAGE)


def _pointers(values: ctypes.Array) -> ctypes.Array:
    """A pointer to each element of `values`, as Unicorn's batch calls take them."""
    base, size = ctypes.addressof(values), ctypes.sizeof(values._type_)
    return (ctypes.c_void_p * len(values))(*(base + size * i for i in range(len(values))))


class ExitKind(Enum):
    TRAP = auto()  # an exception or `int n`: vector and error code
    PAGE_FAULT = auto()  # the Host's page tables refused a translation
    KICKED = auto()  # the run ended without a trap: the doorbell rang (another thread)


class Exit(NamedTuple):
    """Why the Guest came back to the Host (the `trapnum`/`errcode` of lguest_regs).

    A named tuple, not a frozen dataclass: every page fault that leaves makes one,
    and a tuple is made in a third of the time."""

    kind: ExitKind
    trapnum: int = abi.TRAPNUM_IN_SWITCHER
    errcode: int = 0
    address: int = 0  # the page that faulted, for PAGE_FAULT
    fetch: bool = False  # the fault was an instruction fetch
    software: bool = False  # raised by an `int n`-style instruction (EIP is past it)
    insn_len: int = 0  # length of that instruction
    cr2: int | None = None  # for PAGE_FAULT: the exact address, if the Host already told the Guest
    exact: int | None = None  # for PAGE_FAULT: the exact address, if the emulator said (native path)


KICKED = Exit(ExitKind.KICKED)


@functools.lru_cache(maxsize=1024)
def trap_exit(trapnum: int, errcode: int = 0, software: bool = False, insn_len: int = 0) -> Exit:
    """The Exit of a trap: one object per kind of trap, made once and shared (an Exit
    never changes), where every hypercall exit used to make its own."""
    return Exit(ExitKind.TRAP, trapnum, errcode, software=software, insn_len=insn_len)


class Mmu(Protocol):
    """What the Switcher asks of the Host's page tables on every TLB miss."""

    def translate(self, vaddr: int, write: bool, fetch: bool, user: bool) -> tuple[int, int] | int:
        """(physical page, permissions) to install, or a #PF error code to refuse."""
        ...

    def peek(self, vaddr: int) -> int | None:
        """The guest-physical address behind vaddr, without side effects."""
        ...

    def keep_answers(self, answers: FillAnswers) -> None:
        """Keep the answers `translate` may repeat in `answers` (the native path's C hook)."""
        ...


class DirectTrap(Protocol):
    """The Host's fast path (interrupts.py): deliver a trap without leaving the emulator."""

    def __call__(self, vector: int, errcode: int, software: bool) -> bool:
        """True if delivered (keep emulating), False to leave for the run loop
        (always False in virtual-8086 mode: `Switcher.in_vm86`)."""
        ...


class NativeGateTable(Protocol):
    """The gates interrupts.c may deliver through the CPU itself (interrupts.py's NativeGates)."""

    @property
    def table(self) -> ctypes.Structure:
        """struct gate_table, for the C interrupt hook."""
        ...

    @property
    def direct(self) -> int:
        """Direct traps the CPU delivered."""
        ...


class PortBus(Protocol):
    """The Launcher's port I/O, handed to the Host (spec §7.1)."""

    def port_in(self, port: int, size: int) -> int: ...

    def port_out(self, port: int, size: int, value: int) -> bool: ...

    def read_answers(self) -> tuple[int, dict[int, int | None]]:
        """Fixed port reads: the default answer, and per port an answer or None (ask)."""
        ...

    def quiet_writes(self) -> QuietWrites:
        """The writes the Host may queue and hand over later (ports.py)."""
        ...


CR0_TS = 1 << 3
EFLAGS_IOPL = 0x3000
EFLAGS_VIF = 0x80000
EFLAGS_VIP = 0x100000
# The flags the Switcher itself runs with: no trap flag (the trampoline must not
# single-step), no nested task (its `iret` must not become a task return), not
# virtual-8086 mode (its segment loads must be protected-mode ones).
SWITCHER_EFLAGS = 0x2
# What `_enter_host_state` loads, in this order: EFLAGS, then the ring-0 stack and code.
SWITCHER_STATE_IDS = (ctypes.c_int * 3)(UC_X86_REG_EFLAGS, UC_X86_REG_SS, UC_X86_REG_CS)
# What only Unicorn's unprivileged virtual-8086 entry can have put in EFLAGS.
VM86_ONLY_FLAGS = abi.X86_EFLAGS_VM | EFLAGS_IOPL | EFLAGS_VIF | EFLAGS_VIP


class Switcher:
    """One emulated CPU running one Guest, and the world switch in and out of it."""

    def __init__(self, ram_address: int, ram_size: int, mmu: Mmu, bus: PortBus,
                 direct_trap: DirectTrap | None = None, *, native: bool | None = None,
                 probing: bool = False) -> None:
        """An engine with the Guest's RAM (at `ram_address`, from guest-physical 0)
        and the Switcher's pages mapped; `native` None means the default
        (LGUEST_NO_NATIVE, native.py); `probing` only for calibration's own probe."""
        self.native = (native_by_default() if native is None else native) and not probing
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        if ram_size:
            self.uc.mem_map_ptr(0, ram_size, UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC, ram_address)
        # The Switcher's pages are ours (C reads the GDT, TSS and IDT in them).
        self._pages = mmap.mmap(-1, SWITCHER_PAGES * abi.PAGE_SIZE)
        self._pages_anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self._pages)
        self.uc.mem_map_ptr(abi.SWITCHER_ADDR, SWITCHER_PAGES * abi.PAGE_SIZE, UC_PROT_ALL,
                            ctypes.addressof(self._pages_anchor))
        self.mmu = mmu
        self.bus = bus
        self._ram_address, self._ram_size = ram_address, ram_size
        # The Host's fast path for traps lguest sent straight to the Guest (§4.4):
        # called in the interrupt hook; True means delivered, keep emulating.
        self.direct_trap = direct_trap
        self.context = SavedContext(self.uc, None if probing else context_layout())
        self._cpu = None if probing else engine_cpu(self.uc)
        if self._cpu is not None:
            self.context.edit_live(self._cpu)
        self.exit: Exit | None = None
        self._undo: dict[str, int] | None = None  # registers to restore after a faulting in/out
        self._switching = False  # the Host is loading ring-0 segments
        self._frame: dict[str, int] | None = None  # the trampoline's entry frame, while pending
        self._uch = self.uc._uch
        self._switcher_state = (ctypes.c_uint32 * 3)(SWITCHER_EFLAGS, abi.LGUEST_DS, abi.LGUEST_CS)
        self._switcher_state_ptrs = _pointers(self._switcher_state)
        # The registers as the CPU last stopped with them ("Registers: one batch a stop").
        self._regs = (ctypes.c_uint32 * len(ALL_REGS))()  # Unicorn fills 4 bytes (2 of a selector)
        self._reg_ids = (ctypes.c_int * len(ALL_REGS))(*ALL_REGS.values())
        self._reg_ptrs = _pointers(self._regs)
        self._regs_current = False
        self._emulating = False  # inside emu_start: the CPU runs unless a hook holds it
        self._set_values = (ctypes.c_uint32 * MAX_SET)()
        self._set_ids = (ctypes.c_int * MAX_SET)()
        self._set_ptrs = _pointers(self._set_values)
        self._begin = ctypes.c_uint64()
        # Statistics for --stats: world switches, seconds the emulator ran the Guest,
        # seconds our Python hooks took inside it (the Host's and the Launcher's work, not
        # the emulator's), TLB fills, traps delivered without leaving the emulator.
        self.runs = 0
        self.emulating = 0.0
        self.in_hooks = 0.0
        self._hook_depth = 0  # a hook may call Unicorn, which may call another hook
        self.python_fills = 0
        self.python_direct_traps = 0
        # A refused fill the CPU raises as the Guest's #PF itself: the Host's word on the
        # fault (it returns the exact cr2 it told the Guest, or None: leave the emulator).
        self.cpu_page_fault: Callable[[Exit], int | None] | None = None
        self._failure: BaseException | None = None  # raised inside a hook, for run() to raise
        self._odd_code: set[int] = set()  # GDT entries that ever held code the entry gate cannot run in
        self._install_switcher_pages()
        self.fixed_ports: FixedPorts | None = None
        self.fill_answers: FillAnswers | None = None
        self.exact_fills: ExactFills | None = None  # the native path's exact fault addresses
        self.trap_hook: TrapHook | None = None
        self._asking_python = True  # what the C hooks were last told (they start asking)
        self._python_hooks: list[ctypes._CFuncPtr] = []
        self.native_gates: NativeGateTable | None = None  # what interrupts.c may deliver
        self.doorbell = self._install_hooks()
        self.closed = False

    def close(self) -> None:
        """Close the engine (and the doorbell's timer).  Nothing may use the Switcher after."""
        if not self.closed:
            self.closed = True
            self.doorbell.close()
            close_engine(self.uc)
            for native in (self.fill_answers, self.fixed_ports, self.trap_hook):
                if native is not None:
                    native.release()
            self._python_hooks.clear()
            self._pages_anchor = None
            self._pages.close()

    # --- set-up ---------------------------------------------------------------------------
    def _install_switcher_pages(self) -> None:
        self.uc.mem_write(CODE_PAGE, TRAMPOLINE)
        self.uc.mem_write(ENTRY_GATE, b"\xf4")
        # A page of `hlt` where emulation is told to stop; nothing ever gets there.
        self.uc.mem_write(STOP_PAGE, b"\xf4" * abi.PAGE_SIZE)
        self.gdt = [(0, 0)] * abi.GDT_ENTRIES
        self.gdt[abi.GDT_ENTRY_LGUEST_CS] = abi.FLAT_CODE_DPL0
        self.gdt[abi.GDT_ENTRY_LGUEST_DS] = abi.FLAT_DATA_DPL0
        # An available 32-bit TSS with no I/O bitmap, as lguest's (type 9, DPL 0).
        tss = bytearray(abi.TSS_SIZE)
        struct.pack_into("<H", tss, abi.TSS_IO_BITMAP_OFFSET, abi.TSS_SIZE)
        self.uc.mem_write(TSS_ADDR, bytes(tss))
        self.gdt[abi.GDT_ENTRY_TSS] = segment_descriptor(TSS_ADDR, abi.TSS_SIZE - 1, 0x89, 0)
        self.write_gdt()
        self.uc.reg_write(UC_X86_REG_GDTR, (0, GDT_ADDR, abi.GDT_ENTRIES * 8 - 1, 0))
        self.uc.reg_write(UC_X86_REG_IDTR, (0, IDT_ADDR, abi.IDT_ENTRIES * 8 - 1, 0))
        self.uc.reg_write(UC_X86_REG_TR, (abi.GDT_ENTRY_TSS * 8, TSS_ADDR, abi.TSS_SIZE - 1, 0x8900))
        self.uc.reg_write(UC_X86_REG_CS, abi.LGUEST_CS)
        self.uc.reg_write(UC_X86_REG_SS, abi.LGUEST_DS)

    def write_real_gate(self, vector: int, lo: int, hi: int) -> None:
        """One gate of the IDT the emulated CPU itself reads (interrupts.py decides which)."""
        self.uc.mem_write(IDT_ADDR + 8 * vector, struct.pack("<II", lo, hi))

    def set_kernel_stack(self, ss: int, esp: int) -> None:
        """SET_STACK's stack, in the TSS, where the CPU looks on a trap from ring 3."""
        self.uc.mem_write(TSS_ADDR + TSS_ESP1, struct.pack("<I", esp))
        self.uc.mem_write(TSS_ADDR + TSS_SS1, struct.pack("<H", ss))

    def cpu_for_delivery(self) -> tuple[EngineCpu, int] | None:
        """The engine's CPU and where its segment caches are, both proven, for
        interrupts.c; None if either cannot be (then every trap goes to Python).
        Only before the first run, while the CPU holds the Switcher's own segments."""
        cpu = self._cpu
        if cpu is None or self.context.layout is None:
            return None
        flat = (0, 0xFFFFFFFF)
        caches = segment_caches(cpu, self.context.layout, {
            SEGMENT_CS: (abi.LGUEST_CS, *flat), SEGMENT_SS: (abi.LGUEST_DS, *flat),
            SEGMENT_TR: (abi.GDT_ENTRY_TSS * 8, TSS_ADDR, abi.TSS_SIZE - 1)})
        return None if caches is None else (cpu, caches)

    @property
    def state_page(self) -> int:
        """Where our process holds STATE_PAGE (the GDT, TSS and IDT), for interrupts.c."""
        return ctypes.addressof(self._pages_anchor) + STATE_PAGE - abi.SWITCHER_ADDR

    def serve_traps(self, gates: NativeGateTable | None) -> None:
        """Let interrupts.c deliver the traps `gates` marks (None: every trap to Python)."""
        self.native_gates = gates
        if self.trap_hook is not None:
            self.trap_hook.serve_traps(gates.table if gates is not None else None)

    @property
    def direct_traps(self) -> int:
        """Traps delivered without leaving the emulator, by Python or by the CPU (--stats)."""
        native = self.native_gates.direct if self.native_gates is not None else 0
        return self.python_direct_traps + native

    def write_gdt(self) -> None:
        """Copy the Host's view of the GDT into the page the emulated CPU reads."""
        self._odd_code.update(i for i, (lo, hi) in enumerate(self.gdt) if not _gate_runs_in(lo, hi))
        self.uc.mem_write(GDT_ADDR, b"".join(struct.pack("<II", lo, hi) for lo, hi in self.gdt))

# tour:S.20 Leaving the Guest: every hook in one place
# On a real CPU a trap vectors through the IDT into the Switcher.  Unicorn has hooks
# instead, and these are all of them: the interrupt hook (every exception and `int n`), the
# `in` and `out` hooks (port I/O, handed to the Launcher's bus), the invalid-opcode hook
# (#UD), the TLB-fill hook (every miss: our page tables), and the doorbell, a block hook
# written in C so that other threads can stop the CPU cleanly.  On the native path the
# engine translates without per-access exit checks (calibration.py), which changes how the
# doorbell answers, and the `in` and `out` hooks are C for the ports whose answer never
# changes and the writes the Launcher takes quietly, calling the Python ones for the rest.
# Debugging hooks
# (breakpoints, watchpoints) come and go through `watch_code` and `watch_writes`; nothing
# else adds a hook.
    def _install_hooks(self) -> Doorbell:
        """Every way out of the Guest, installed here and nowhere else.

        Python hooks are guarded (`_guard`); the doorbell is C (doorbell.py), and
        so are fixed port reads and quiet writes (ports.py) and TLB misses already answered (fills.py)
        on the native path.
        """
        if self.native:
            self.trap_hook = TrapHook(self.uc, self._guard(self._on_interrupt, None),
                                      self._guard(self._on_invalid, True))
        else:
            self._add_hook(UC_HOOK_INTR, HOOK_INTR_CFUNC, self._guard(self._on_interrupt, None))
            self._add_hook(UC_HOOK_INSN_INVALID, HOOK_INSN_INVALID_CFUNC, self._guard(self._on_invalid, True))
        if self.native:
            self.fixed_ports = FixedPorts(self.uc, self.bus, self._guard(self._on_in, 0),
                                          self._guard(self._on_out, None), self._guard)
        else:
            self._add_hook(UC_HOOK_INSN, HOOK_INSN_IN_CFUNC, self._guard(self._on_in, 0), UC_X86_INS_IN)
            self._add_hook(UC_HOOK_INSN, HOOK_INSN_OUT_CFUNC, self._guard(self._on_out, None), UC_X86_INS_OUT)
        if self.native:
            self.fill_answers = FillAnswers(self.uc, self._ram_address, self._ram_size,
                                            self._guard(self._on_tlb_fill, False), STATE_PAGE)
            self.mmu.keep_answers(self.fill_answers)
            self.exact_fills = ExactFills(self._cpu)
        else:
            on_fill = self._guard(self._on_tlb_fill, False)
            self._add_hook(UC_HOOK_TLB_FILL, HOOK_TLB_FILL_CFUNC, lambda engine, vaddr, access, entry, data:
                           on_fill(engine, vaddr, access, entry.contents, data))
        quiet = self.native and quiet_exit_checks(self.uc)
        return Doorbell(self.uc, ENTRY_GATE if quiet else None)

    def _add_hook(self, kind: int, prototype: type, hook: Callable[..., object], *insn: int) -> None:
        """A Python hook, over all addresses, registered through Unicorn's C API itself
        (the binding's own wrapper adds two Python calls to each call of a hook)."""
        callback = prototype(hook)
        self._python_hooks.append(callback)  # ctypes calls it only while we hold it
        handle = uc_hook_h()
        err = uclib.uc_hook_add(self._uch, ctypes.byref(handle), kind, ctypes.cast(callback, ctypes.c_void_p),
                                None, ctypes.c_uint64(1), ctypes.c_uint64(0), *map(ctypes.c_int, insn))
        if err:
            raise UcError(err)

    @property
    def port_reads_served(self) -> int:
        """Port reads answered in C, which the Launcher never saw (--stats)."""
        return self.fixed_ports.served if self.fixed_ports is not None else 0

    @property
    def native_fills(self) -> int:
        """TLB misses answered in C, which the page tables never saw."""
        return self.fill_answers.served if self.fill_answers is not None else 0

    @property
    def fills(self) -> int:
        """Every TLB miss answered, in Python or in C (--stats' page faults served)."""
        return self.python_fills + self.native_fills

    def _drain_port_writes(self) -> None:
        """The port writes C queued reach the Launcher now, before anything can see them."""
        if self.fixed_ports is not None:
            self.fixed_ports.drain()
            self.fixed_ports.forget_windows()  # Python runs: C trusts no window it saw set

    def _native_ask_python(self, ask: bool = True) -> None:
        """While the Host has news the C hooks cannot see (an exit pending, a
        failed hook, a frame for the trampoline, the Host itself switching rings
        outside the emulator), every port read goes to `_on_in` and every TLB miss
        to `_on_tlb_fill`."""
        if ask == self._asking_python:
            return  # the C hooks already know (each exit used to tell them three times)
        self._asking_python = ask
        if self.fixed_ports is not None:
            self.fixed_ports.ask_python(ask)
        if self.fill_answers is not None:
            self.fill_answers.ask_python(ask)
        if self.trap_hook is not None:
            self.trap_hook.ask_python(ask)

    # --- registers ------------------------------------------------------------------------
# tour:S.25 Registers: one batch a stop
# lguest's Switcher pushed all the Guest's registers onto the Host's stack in one go, and the
# Host read them from there.  Ours live in the emulator, behind Unicorn's C API, and a call
# from Python into C costs far more than the C behind it: reading five registers one at a
# time cost more than the rest of a hypercall exit.  So the first time the Host asks for a
# register after the CPU stopped, it reads every general and segment register in one batch
# into a buffer made once, and answers from that copy until the CPU runs again: when
# emulation starts, and when a hook returns (the CPU goes on from there).  A write goes to
# the CPU at once and into the copy, except EFLAGS, whose fixed bits the CPU keeps its own
# way: after that the copy is read again.  A register of the entry frame waiting for the
# trampoline is answered from the frame.
    def _registers(self) -> ctypes.Array:
        """The CPU's registers (slots in ALL_REGS' order), read once per stop."""
        if not self._regs_current:
            _reg_read_batch(self._uch, self._reg_ids, self._reg_ptrs, len(ALL_REGS))
            # Kept only while nothing can run: outside the emulator, or inside one of our
            # hooks (a debugger's hook may read mid-block, and the CPU goes on after it).
            self._regs_current = not self._emulating or self._hook_depth > 0
        return self._regs

    def get(self, reg: str) -> int:
        """A Guest register (from the entry frame, if one is waiting)."""
        if self._frame is not None and reg in self._frame:
            return self._frame[reg]
        return self._registers()[SLOT[reg]]

    def get_many(self, regs: tuple[str, ...]) -> list[int]:
        """Several registers (the hot paths read five at once)."""
        values = self._registers()
        frame = self._frame
        if frame is None:
            pick = _PICKERS.get(regs)
            if pick is None:
                pick = _PICKERS[regs] = _picker(regs)
            return list(pick(values))
        return [frame[reg] if reg in frame else values[SLOT[reg]] for reg in regs]

    def set(self, reg: str, value: int) -> None:
        """Set a general register, eip, esp or eflags."""
        self.set_many((reg,), (value,))

    def set_many(self, regs: tuple[str, ...], values: tuple[int, ...]) -> None:
        """Set up to MAX_SET general registers (eip, esp, eflags among them) in one call.

        Through the batch call even for one register: `uc_reg_write` of EIP also
        tells Unicorn to skip resyncing EIP at its next stop, a note only a check
        inside a translated block clears.  Set from a hook that runs outside any
        block (the interrupt hook), it would stay, and a kick landing later where
        a block starts would leave EIP where an earlier block began.
        """
        frame, count = self._frame, 0
        for reg, value in zip(regs, values, strict=True):
            if frame is not None and reg in frame:
                frame[reg] = value & 0xFFFFFFFF
                continue
            self._set_ids[count] = GENERAL_REGS[reg]
            self._set_values[count] = value & 0xFFFFFFFF
            count += 1
            if self._regs_current:
                if reg == "eflags":
                    self._regs_current = False
                else:
                    self._regs[SLOT[reg]] = value & 0xFFFFFFFF
        if count and _reg_write_batch(self._uch, self._set_ids, self._set_ptrs, count):
            self._regs_current = False
            raise ValueError(f"cannot set {regs}")

    @property
    def cpl(self) -> int:
        """The ring the CPU really runs in (0 while the Host itself is switching).

        In protected mode the emulator keeps CS's RPL equal to the CPL (it moves
        both together on every ring change); virtual-8086 mode is the exception:
        there CS is a real-mode segment number whatever its low bits say, and the
        CPL is always 3.
        """
        if self._switching:
            return 0
        if self._frame is not None:
            cs, eflags = self._frame["cs"], self._frame["eflags"]
        else:
            values = self._registers()  # every TLB fill asks
            cs, eflags = values[SLOT["cs"]], values[SLOT["eflags"]]
        return 3 if eflags & abi.X86_EFLAGS_VM else cs & 3

# tour:S.30 Entering the Guest: back to ring 0 first
# To enter the Guest in any ring the trampoline must start in ring 0, where its `iret` may
# go anywhere the CPU's own checks allow.  A real Switcher got there through a gate. Ours
# cannot: Unicorn offers no way to change the privilege level, so the Host clears the CPL
# bits in the emulator's saved CPU state (the only way in, found by calibration:
# "Workaround: the emulator's private state, measured"), loads the Switcher's ring-0 code
# and stack segments, and gives the trampoline clean EFLAGS, whatever the Guest left there
# (a trap flag, a nested-task flag).  Then `run` writes the Guest's frame on the ring-0
# stack and starts emulating at the trampoline.  When only EIP, ESP or EFLAGS change within
# the same ring (most trap returns), the Host skips all this and just sets the registers.
    def _enter_host_state(self) -> None:
        """Put the CPU in the Switcher's own state: its EFLAGS, and CPL 0 so the
        trampoline may load any Guest ring.  Whatever the Guest left in EFLAGS
        (TF, NT, VM) belongs in the frame the trampoline loads, never to the
        trampoline itself."""
        ring = self.cpl  # while EFLAGS still says whether this is virtual-8086 mode
        self._regs_current = False
        if ring == 0:
            _reg_write_batch(self._uch, SWITCHER_STATE_IDS, self._switcher_state_ptrs, 1)  # EFLAGS alone
            return
        self.context.drop_to_ring0()
        # EFLAGS first (the segments then load as protected-mode ones), then SS and CS, in
        # one call.  Loading these reads the GDT, which may miss in the TLB: the fill must
        # see ring 0 (a refused fill outside emulation would crash Unicorn).
        self._switching = True
        try:
            if _reg_write_batch(self._uch, SWITCHER_STATE_IDS, self._switcher_state_ptrs,
                                len(SWITCHER_STATE_IDS)):
                raise ValueError("cannot load the Switcher's segments")
        finally:
            self._switching = False

    # --- entering -------------------------------------------------------------------------
    def load_frame(self, eip: int, cs: int, eflags: int, esp: int, ss: int, ds: int, es: int,
                   fs: int, gs: int) -> None:
        """Enter the Guest through the trampoline with this frame on the next `run`.

        Until then the frame is the Guest's state: `get` and `set` see it.
        """
        self._native_ask_python()
        self._frame = {"gs": gs, "fs": fs, "es": es, "ds": ds, "eip": eip, "cs": cs, "eflags": eflags,
                       "esp": esp, "ss": ss}

# tour:S.35 The entry gate: every entry starts on the Switcher's page
# On the native path the doorbell hook watches only the Switcher's code page, and a ring
# that came while the vCPU was outside the emulator (which `uc_emu_start` forgets) must
# still stop the next entry.  An entry with a frame starts at the trampoline anyway; one
# without (most trap returns: same ring, only EIP, ESP or EFLAGS changed) starts at the
# gate, a `hlt` at CODE_PAGE+0x800 that never runs: its block's hook either stops (rung) or
# sets EIP to where the Guest was going.  The gate is entered by offset in the Guest's own
# CS, so that CS must be flat; a Guest whose entry CS comes from a GDT entry that ever held
# another kind of code sends this vCPU back to the hook before every block, for good.
    def _start_address(self) -> int:
        """Where emulation starts: the trampoline if a frame waits, else the entry
        gate (native path) or the Guest's eip."""
        if self._frame is None:
            eip, cs = self.get_many(("eip", "cs"))
            if self.doorbell.gated and (cs & 4 or cs >> 3 in self._odd_code):
                # CS may hold a segment that is not flat (or an LDT one): the gate,
                # entered by offset, would not be where we put it.
                self.doorbell.ring_every_block()
            if not self.doorbell.gated:
                return eip
            return self.doorbell.through_gate(eip)
        frame, self._frame = self._frame, None
        self._enter_host_state()
        # Straight into our own page (no Unicorn call): nothing ever runs code from it.
        ENTRY_FRAME.pack_into(self._pages, ENTRY_FRAME_ADDR - abi.SWITCHER_ADDR,
                              *[frame[reg] for reg in ENTRY_FRAME_REGS])
        self.set("esp", ENTRY_FRAME_ADDR)
        return CODE_PAGE

# tour:S.40 One world switch
# `run` starts the emulator (at the trampoline if a new frame waits, else where the Guest
# stopped) and returns when a hook asked it to stop, with the reason (`Exit`).  A doorbell
# can ring while the trampoline itself is running; the world switch must then be all or
# nothing, so the frame is read back from the ring-0 stack and the next run starts the
# trampoline again, as if it had never begun.
    def run(self) -> Exit:
        """Run the Guest from its current state until it traps back to the Host.

        An exception raised inside one of our hooks is raised here, as itself.
        """
        exit_ = self._emulate(self._start_address())
        if self.get("eip") == ENTRY_GATE:
            self.set("eip", self.doorbell.resume)  # a ring stopped us at the gate
        if self.in_vm86():
            return self._refuse_vm86()
        if exit_.kind is ExitKind.KICKED and self.get("eip") & ~0xFFF == CODE_PAGE:
            # A kick stopped us inside the trampoline, before the Guest got the CPU
            # back.  The world switch is all or nothing: the Guest's state is still
            # the whole entry frame, and the next run starts the trampoline again.
            words = ENTRY_FRAME.unpack_from(self._pages, ENTRY_FRAME_ADDR - abi.SWITCHER_ADDR)
            self._frame = dict(zip(ENTRY_FRAME_REGS, words, strict=True))
        return exit_

    def in_vm86(self) -> bool:
        """Is the CPU itself (not a frame waiting for the trampoline) in virtual-8086 mode?"""
        return self._frame is None and bool(self.get("eflags") & abi.X86_EFLAGS_VM)

# tour:S.50 Workaround: refusing virtual-8086 mode
# A real CPU honours the VM flag in an `iret` frame only at ring 0, which the Guest never
# has.  Unicorn honours it at any ring, so a hostile Guest could enter virtual-8086 mode
# from ring 1 or even ring 3.  No hook sees an `iret`, so the Host checks EFLAGS.VM each
# time the CPU comes back, and turns such an entry into the #GP a real CPU would have
# raised, with a frame that reads as ring 3.
    def _refuse_vm86(self) -> Exit:
        """Undo a virtual-8086 entry the emulator should have refused: a #GP from ring 3.

        Only an `iret` gets here (nothing else can set VM), and a real CPU obeys
        the VM bit of an `iret` frame only at CPL 0, which the Guest never has.
        At CPL 1 or 3 it ignores the bit and does an ordinary return, which for
        the segment numbers a real-mode frame holds means #GP(selector).  The
        `iret` itself is gone by now (EIP and the stack have moved on, and no
        hook sees an `iret` without running a hook before every instruction),
        so the Guest gets that #GP here, at the first moment the Host sees the
        CPU, with the error code of the selector the `iret` loaded into CS.  The
        frame must read as ring 3 whichever ring the `iret` ran in: RPL 3 on CS
        and SS, EFLAGS without what only the unprivileged entry could load, and
        the null data segments a trap out of virtual-8086 mode leaves.
        """
        eip, cs, eflags, esp, ss = self.get_many(("eip", "cs", "eflags", "esp", "ss"))
        self._enter_host_state()
        self.load_frame(eip, cs | 3, eflags & ~VM86_ONLY_FLAGS, esp, ss | 3, 0, 0, 0, 0)
        return trap_exit(abi.Trap.GP, cs & 0xFFFC)

    def _emulate(self, begin: int) -> Exit:
        self.exit = None
        self._raised_fault()  # none is left from the last run; if one were, it is gone
        self._native_ask_python(False)
        if not self.runs and self.fixed_ports is not None:
            self.fixed_ports.learn_writes(self.bus.quiet_writes())  # the devices have joined the bus
        self.runs += 1
        started, hooks_before = time.perf_counter(), self.in_hooks
        self._regs_current, self._emulating = False, True
        try:
            self._start_emulator(begin)
        except UcError as err:
            if self._failure is None:
                if self.exit is None:
                    # A fault the hooks did not explain, e.g. inside the trampoline
                    # while loading a bad Guest segment (spec §4.1's trapnum 256).
                    return trap_exit(abi.TRAPNUM_IN_SWITCHER, err.errno)
                if err.errno != UC_ERR_EXCEPTION:
                    raise
        finally:
            self._emulating = False
            # Our Python hooks ran inside emu_start: their time is the Host's, not the emulator's.
            self.emulating += time.perf_counter() - started - (self.in_hooks - hooks_before)
            self._native_ask_python()  # misses outside emulation: the Host's own loads
            self._drain_port_writes()  # however the run ended, no write is lost
        if self._failure is not None:
            # A hook failed: whatever the emulator made of its default answer
            # (often a fault) is no news of the Guest's.
            failure, self._failure = self._failure, None
            raise failure
        if self._undo is not None:
            for reg, value in self._undo.items():
                self.set(reg, value)
            self._undo = None
        return self.exit or KICKED

    def _start_emulator(self, begin: int) -> None:
        """`uc.emu_start(begin, STOP_PAGE)`, without the binding's conversions."""
        self.uc._hook_exception = None  # what the binding's own hooks (a debugger's) raised
        self._begin.value = begin
        err = _emu_start(self._uch, self._begin, _STOP_AT, _NO_LIMIT, _NO_LIMIT)
        if err:
            raise UcError(err)
        if self.uc._hook_exception is not None:
            raise self.uc._hook_exception

    def _stop_emulator(self) -> None:
        """`uc.emu_stop()`, from inside a hook."""
        _emu_stop(self._uch)

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Put a device window in the emulator's physical map: its loads and stores
        become calls, whatever instruction makes them (no decoding, unlike lguest)."""
        def on_read(uc: Uc, offset: int, width: int, _data: object) -> int:
            self._drain_port_writes()
            return read(offset, width)

        def on_write(uc: Uc, offset: int, width: int, value: int, _data: object) -> None:
            self._drain_port_writes()
            write(offset, width, value)

        self.uc.mmio_map(gpa, size, self._guard(on_read, 0), None, self._guard(on_write, None), None)

    def set_task_switched(self, ts: bool) -> None:
        """Mirror the Guest's wish for CR0.TS: then the first FPU instruction is #NM."""
        cr0 = self.uc.reg_read(UC_X86_REG_CR0)
        self.uc.reg_write(UC_X86_REG_CR0, cr0 | CR0_TS if ts else cr0 & ~CR0_TS)

    def fpu_state(self) -> dict[str, int | list[int] | list[list[int]]]:
        """The x87 and SSE registers, by name (a snapshot's; never on a hot path)."""
        state: dict[str, int | list[int] | list[list[int]]] = {
            name: self.uc.reg_read(reg) for name, reg in FPU_CONTROL_REGS.items()}
        state["x87"] = [list(self.uc.reg_read(reg)) for reg in X87_REGS]
        state["xmm"] = [self.uc.reg_read(reg) for reg in XMM_REGS]
        return state

    def set_fpu_state(self, state: dict) -> None:
        """Load what `fpu_state` returned: the physical registers first, then FPSW's stack top."""
        for reg, (mantissa, exponent) in zip(X87_REGS, state["x87"], strict=True):
            self.uc.reg_write(reg, (mantissa, exponent))
        for reg, value in zip(XMM_REGS, state["xmm"], strict=True):
            self.uc.reg_write(reg, value)
        for name, reg in FPU_CONTROL_REGS.items():
            self.uc.reg_write(reg, state[name])

    def flush_tlb(self) -> None:
        """Forget every translation the emulator has cached (our shadow page tables)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if self.fill_answers is not None:
            self.fill_answers.tlb_flushed()

    # --- debugging: what the Launcher's gdb stub may ask of the CPU ------------------------------
    def watch_code(self, begin: int, end: int, callback: Callable[[int], None]) -> int:
        """Call callback(eip) before each instruction run in [begin, end] (virtual).

        Breakpoints and single steps are hooks, never `int3`s written into the Guest.
        """
        self._precise_stops()
        handle = self.uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, _: callback(addr), None, begin, end)
        self.forget_code()  # blocks translated before the hook would not call it
        return handle

    def watch_writes(self, begin: int, end: int, callback: Callable[[int], None]) -> int:
        """Call callback(gpa) when a Guest store touches [begin, end] (watchpoints).

        Guest-physical: with the TLB in our hands the emulator names a store by
        the address it translated to.
        """
        self._precise_stops()
        return self.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, addr, size, value, _: callback(addr),
                                None, begin, end)

    def _precise_stops(self) -> None:
        """A debugger stops the CPU from inside its hooks, at an instruction: that
        needs the emulator's exit checks back, and with them the doorbell's hook
        before every block (a stop from another thread is unsafe again), for good."""
        if self.doorbell.gated:
            restore_exit_checks(self.uc)
            self.doorbell.ring_every_block()  # which flushes every translated block
        # The CPU's own delivery would write frames under the debugger's watchpoints
        # and never stop where it looks: traps go back to the Host's Python.
        if self.trap_hook is not None:
            self.trap_hook.serve_traps(None)

    def unwatch(self, handle: int) -> None:
        self.uc.hook_del(handle)
        self.forget_code()

    def pause(self) -> None:
        """From inside a debugging hook: leave the emulator before the next instruction."""
        self.uc.emu_stop()

    def forget_code(self) -> None:
        """Drop every translated block (new hooks, or Guest code changed behind the CPU)."""
        self.uc.ctl_flush_tb()

    # --- leaving: the hooks ---------------------------------------------------------------
# tour:S.60 Workaround: a failing hook must not look like the Guest's fault
# Our hooks are Python called from C through ctypes.  An exception escaping one would be
# printed and swallowed, and the emulator would carry on with a default answer: a refused
# TLB fill (a page fault the Guest never caused) or a zero from a port.  So every hook is
# wrapped: the first exception is kept, the emulator is stopped, and every later hook call
# in the same run gets the harmless default; `run` then raises the exception on the vCPU
# thread, where the Launcher reports it as our bug (exit 3), never as the Guest's.
    def _guard(self, hook: Callable[..., object], default: object) -> Callable[..., object]:
        """`hook` made safe to call from the emulator.

        An exception must not escape into ctypes, which would print it and
        answer the emulator with a default (a refused fill, a zero read) that
        looks like the Guest's doing.  We keep the first one, stop emulating,
        answer `default` to this and every later hook call, and `run()` raises it.
        """
        def guarded(*args: object) -> object:
            if self._failure is not None:
                return default
            started = time.perf_counter()
            self._hook_depth += 1
            try:
                return hook(*args)
            except BaseException as failure:  # noqa: BLE001 (run() raises it, as itself)
                self._failure = failure
                self._native_ask_python()
                self._stop_emulator()
                return default
            finally:
                self._hook_depth -= 1
                self._regs_current = False  # the CPU goes on from here
                if not self._hook_depth:
                    self.in_hooks += time.perf_counter() - started
        return guarded

    def _leave(self, exit_: Exit) -> None:
        if self.exit is None:
            self.exit = exit_
        self._native_ask_python()
        self._stop_emulator()

# tour:S.70 The interrupt hook: a trap leaves the Guest
# Every exception and every `int n` stops here, before the CPU would look at an IDT. For a
# fault the Host asks the emulator's saved state ("Workaround: the emulator's private state,
# measured") for the error code and whether an `int` raised it, and resets the "exception in
# flight" field, or the next fault would be escalated to a double fault.  A fault inside the
# trampoline means the Guest's frame or segments were bad: that is trap 256 (the Switcher's
# own pages never fault otherwise).  An `int n` is two bytes long, `int3` one, and the
# length is recorded so a refused gate can point EIP back at it.  Then the fast path may
# deliver it at once ("Direct traps: no trip through the run loop"), or the CPU stops and
# the run loop gets the trap.
    def _on_interrupt(self, _engine: object, vector: int, _data: object) -> None:
        if vector == abi.LGUEST_TRAP_ENTRY or vector >= abi.FIRST_EXTERNAL_VECTOR:
            # Only `int n` raises these on our CPU (there is no hardware to interrupt).
            errcode, software, insn_len = 0, True, 2
        else:
            errcode, software = self.context.finish_exception()
            raised = self._raised_fault() if vector == abi.Trap.PF and not software else None
            if raised is not None:
                # A fault fills.c had the CPU raise, which interrupts.c did not deliver:
                # it leaves the emulator as if the fill had refused it (cr2 is told).
                fault, cr2 = raised
                self._leave(fault._replace(cr2=cr2))
                return
            if self.get("eip") >> 12 == CODE_PAGE >> 12:
                # A fault in the trampoline: the Guest's segments or frame were bad.
                self._leave(trap_exit(abi.TRAPNUM_IN_SWITCHER, errcode))
                return
            if vector not in abi.TRAPS_WITH_ERROR_CODE:
                errcode = 0
            insn_len = self._software_int_length(vector) if software else 0
        self._trap(vector, errcode, software, insn_len)

    def _raised_fault(self) -> tuple[Exit, int] | None:
        """The #PF raised from a fill (by the Python hook or by C itself) that the CPU has
        not delivered, and its cr2: one note, in C, which interrupts.c clears when it
        delivers (a note kept here would outlive a fault the CPU delivered)."""
        in_c = self.fill_answers.take_raised() if self.fill_answers is not None else None
        if in_c is None:
            return None
        page, errcode, cr2, fetch = in_c
        return Exit(ExitKind.PAGE_FAULT, abi.Trap.PF, errcode, page, fetch=fetch), cr2

    def _trap(self, vector: int, errcode: int, software: bool = False, insn_len: int = 0) -> None:
        """A trap: straight into the Guest if the Host's fast path takes it, else exit.

        Never from virtual-8086 mode: the fast path refuses it there (it reads the
        registers only for a vector that could go direct), and whatever exit is
        taken, `run()` turns it into the #GP the entry into that mode should have
        been."""
        if self.direct_trap is not None and self.direct_trap(vector, errcode, software):
            self.python_direct_traps += 1
            if self._frame is not None:
                # The handler is in another ring: the trampoline must take us there,
                # and it only runs from outside a hook (switching rings inside one
                # left Unicorn's state inconsistent under kicks).  Stop; the run
                # loop re-enters at once, with no trap to handle.
                self._stop_emulator()
            return
        self._leave(trap_exit(vector, errcode, software, insn_len))

    def _software_int_length(self, vector: int) -> int:
        """`int n` is two bytes; `int3` and `into` are one."""
        return 1 if vector in (abi.Trap.BP, abi.Trap.OF) and self._byte_before_eip() != vector else 2

    def _byte_before_eip(self) -> int:
        gpa = self.mmu.peek(self.get("eip") - 1)
        return -1 if gpa is None else self.uc.mem_read(gpa, 1)[0]

    def _on_invalid(self, _engine: object, _data: object) -> bool:
        self._trap(abi.Trap.UD, 0)
        return True

# tour:S.80 Workaround: precise faults on in and out
# lguest's TSS gives user code no I/O permission, so `in` or `out` at ring 3 is a #GP, and
# so is a port write the Launcher refuses.  The emulator has no such check, and a hook
# cannot stop it before the rest of the translated block runs.  So the Host makes the fault
# precise by hand: it saves the registers as they are at the `in`/`out`, flushes the TLB and
# refuses every further fill, so no later instruction in the block can touch memory, ignores
# port I/O once an exit is pending, and when the emulator stops puts the registers back.
# The Guest sees the #GP at the instruction, as on a real CPU.
    def _fault_here(self, exit_: Exit) -> None:
        """Make the in/out instruction being executed fault, precisely.

        A hook cannot stop Unicorn before the rest of the current translation
        block runs.  So we remember the registers as they are at this instruction,
        and make every further memory access fail (flush the TLB, refuse every
        fill) so nothing after it can touch memory; port I/O is ignored once an
        exit is pending.  When the emulator stops, `run` puts the registers back.
        """
        self._undo = {reg: self.get(reg) for reg in GENERAL_REGS}
        self.flush_tlb()
        self._leave(exit_)

    def _on_in(self, _engine: object, port: int, size: int, _data: object) -> int:
        self._drain_port_writes()
        if self.exit is not None:
            return self.get("eax")
        if self.cpl == 3:
            # lguest's TSS has no I/O bitmap: user code touching a port is #GP(0).
            self._fault_here(trap_exit(abi.Trap.GP))
            return self.get("eax")
        return self.bus.port_in(port, size)

    def _on_out(self, _engine: object, port: int, size: int, value: int, _data: object) -> None:
        self._drain_port_writes()
        if self.exit is not None:
            return
        if self.cpl == 3 or not self.bus.port_out(port, size, value):
            # User code, or a write the Launcher rejected: #GP(0) at the out.
            self._fault_here(trap_exit(abi.Trap.GP))

# tour:S.90 The TLB-fill hook: a page fault leaves the Guest
# Unicorn is built here in virtual-TLB mode: it never walks page tables itself, and calls
# this hook on every miss with the address and the kind of access.  The Switcher's own pages
# are answered first ("The Switcher's pages and the trampoline"); everything else goes to
# the Host's page tables ("A page fault: from a TLB miss to demand_page"). A translation
# goes into the emulator's TLB and the Guest never notices.  A refusal makes the hook record
# a page-fault exit with the page, the error code and whether it was an instruction fetch;
# the CPU stops, and the run loop reflects the fault ("A page fault, back to the Guest").
    def _on_tlb_fill(self, _engine: object, vaddr: int, access: int, entry: ctypes.Structure,
                     _data: object) -> bool:
        if self._undo is not None:
            return False  # an in/out already faulted: nothing after it may run
        self.python_fills += 1
        write = access == UC_MEM_WRITE
        fetch = access == UC_MEM_FETCH
        cpl = self.cpl
        if vaddr >= abi.SWITCHER_ADDR:
            answer = self._switcher_translation(vaddr, write, fetch, cpl)
        else:
            answer = self.mmu.translate(vaddr, write, fetch, cpl == 3)
        if isinstance(answer, int):
            exact = self.exact_fills.address(vaddr) if self.exact_fills is not None else None
            fault = Exit(ExitKind.PAGE_FAULT, abi.Trap.PF, answer, vaddr, fetch=fetch, exact=exact)
            if not self._raise_in_cpu(fault):
                self._leave(fault)
            return False
        entry.paddr, entry.perms = answer
        return True

    def _raise_in_cpu(self, fault: Exit) -> bool:
        """Have the CPU raise this page fault itself, without an exit, if the C fill hook
        is asking and the Host says the Guest's gate may take it (cr2 then told)."""
        answers = self.fill_answers
        if (answers is None or self.cpu_page_fault is None or self._frame is not None
                or not answers.may_raise()):
            return False
        cr2 = self.cpu_page_fault(fault)
        if cr2 is None:
            return False
        answers.note_raised(fault.address, fault.errcode, cr2, fault.fetch)
        answers.raise_page_fault(fault.errcode)
        return True

    def _switcher_translation(self, vaddr: int, write: bool, fetch: bool,
                              cpl: int) -> tuple[int, int] | int:
        """The Switcher's own pages (vaddr at SWITCHER_ADDR or above): kernel-only,
        like the original's mapping."""
        page = vaddr & ~0xFFF
        error = abi.PF_WRITE * write | abi.PF_USER * (cpl == 3)
        if page in (CODE_PAGE, STOP_PAGE) and fetch:
            # Unicorn looks up these code pages itself when it starts and stops, at
            # whatever ring the Guest is in.  Executing them gains nothing: the
            # trampoline's `iret` can never raise the privilege level.
            return page, UC_PROT_EXEC
        if cpl == 3 or page >= abi.SWITCHER_ADDR + SWITCHER_PAGES * abi.PAGE_SIZE:
            return error
        perms = SWITCHER_PERMS.get(page, 0)
        needed = UC_PROT_WRITE if write else UC_PROT_EXEC if fetch else UC_PROT_READ
        if not perms & needed:
            return error | 1
        return page, perms


def _gate_runs_in(lo: int, hi: int) -> bool:
    """Can the entry gate run in the code segment this descriptor loads into CS?

    The gate is entered by offset, so the segment must be flat: base 0, limit
    0xFFFFF in pages, 32-bit.  Anything but a code segment (an empty entry
    included) never gets into CS."""
    code_segment = hi & 0x1800 == 0x1800  # S (not a system segment) and executable
    return not code_segment or (lo == 0x0000FFFF and hi & 0xFFCF00FF == 0x00CF0000)
