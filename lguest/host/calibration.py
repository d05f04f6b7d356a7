"""The emulator's private state: measured, never assumed (no lguest counterpart).

lguest ran on a real CPU; we run on Unicorn (QEMU's TCG), which never finishes
delivering an exception through an IDT and offers no API for the CPU state the
Switcher must repair afterwards.  That state lives in Unicorn's saved-context
blob, at offsets that depend on how Unicorn was built, so this module measures
them once per process with a probe (`calibrate`) and is the only module that
reads or writes that blob (`SavedContext`) or any other private part of the
engine (`close_engine`).  A newer Unicorn that moves a field breaks the probe
loudly, at start-up, instead of corrupting a Guest.

What it owns: the probe, the measured offsets (`ContextLayout`), and the three
repairs the Switcher asks for: finish the exception just raised (else the next
fault becomes a #DF), read its error code and whether an `int n` raised it, and
drop the CPL to 0 so the trampoline may load any Guest ring.  And one switch in
the engine itself, `no_exit_request`, found and proven the same way
(`quiet_exit_checks`): it lets the native path stop the emulator without a hook
before every block.  Last, where the engine keeps its CPU (`engine_cpu`), for the
native path's C hooks that call QEMU's own delivery and TLB functions.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from unicorn import (
    UC_ARCH_X86,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.unicorn_py3.unicorn import uc_context, uclib
from unicorn.x86_const import UC_X86_REG_EBX, UC_X86_REG_EIP

from lguest import abi
from lguest.host.segments import segment_descriptor

if TYPE_CHECKING:
    from lguest.host.switcher import Switcher

HF_CPL_MASK = 3
HF_PE_MASK = 0x80  # protected mode


@dataclass(frozen=True)
class ContextLayout:
    """Where the fields the Host must touch sit in Unicorn's saved-context blob."""

    hflags: int
    old_exception: int
    error_code: int
    exception_is_int: int


class CalibrationError(RuntimeError):
    pass


# tour:S.110 Workaround: the emulator's private state, measured
# Unicorn never finishes delivering an exception, and it has no API for two pieces of CPU
# state the Switcher must repair: the "exception in flight" field (reset after every fault
# the Host handles, or the next one becomes a #DF) and the CPL bits of `hflags` (the only
# way back to ring 0, "Entering the Guest: back to ring 0 first").  Both live in the
# engine's saved-context blob, with the error code and the "raised by `int`" flag, at
# offsets that depend on how Unicorn was built.  So at start-up a probe measures them: at
# ring 1 it loads three bad selectors into %ds (three #GPs with known error codes: the
# offset holding each is the error-code field; the word that was 0xffffffff at rest and
# holds 13 after the first is the in-flight field, and three #GPs in a row, each reset,
# prove the reset works), then `iret`s to
# ring 3 and runs `int3` (the word whose low bits went from 1 to 3 is hflags; the flag set
# just before the return address is the "raised by int" flag).  If any field is not found
# exactly once, the Host refuses to start.  This file is the only one that reads or writes
# that blob.  Where the engine's CPU itself is found and proven to hold the same bytes
# ("engine_cpu" below), the repairs are made there in place: copying the whole state out and
# back cost a microsecond on every fault and every ring change.
class SavedContext:
    """One engine's saved-context buffer, and the repairs made through it.

    Unicorn frees the buffer itself when the engine closes, so it is deliberately
    not a UcContext (whose finalizer would free it a second time).
    """

    def __init__(self, uc: Uc, layout: ContextLayout | None) -> None:
        self._uch = uc._uch
        self.layout = layout  # None only while the probe is measuring it
        self._context = uc_context()
        uclib.uc_context_alloc(self._uch, ctypes.byref(self._context))
        self._size = uclib.uc_context_size(self._uch)
        self._live: ctypes.Array[ctypes.c_char] | None = None  # the CPU's own state (`edit_live`)
        self._live_shift = 0  # a blob offset minus this is the same field's in the live state

    def edit_live(self, cpu: EngineCpu) -> None:
        """Make the repairs below in the CPU's own state from now on (`engine_cpu`
        proved it is what the blob holds): the same fields, without copying the whole
        state out and back (some kilobytes each way) on every fault and ring change."""
        self._live = (ctypes.c_char * (self._size - cpu.blob_header)).from_address(cpu.env)
        self._live_shift = cpu.blob_header

    def _fields(self) -> tuple[ctypes.Array[ctypes.c_char], int]:
        """Where the fields are to be edited (the live state, or a fresh saved copy),
        and the shift from their blob offsets."""
        if self._live is not None:
            return self._live, self._live_shift
        return self.blob(), 0

    def _edited(self) -> None:
        """The edits are made: load a saved copy back (the live state needs nothing)."""
        if self._live is None:
            self.commit()

    def blob(self) -> ctypes.Array[ctypes.c_char]:
        """Save the CPU into the buffer and return it, writable in place."""
        uclib.uc_context_save(self._uch, self._context)
        return (ctypes.c_char * self._size).from_address(self._context.value or 0)

    def commit(self) -> None:
        """Load the (edited) buffer back into the CPU."""
        uclib.uc_context_restore(self._uch, self._context)

    def finish_exception(self) -> tuple[int, bool]:
        """The error code of the exception just raised and whether an `int n` raised
        it; and mark it finished.

        Unicorn never finishes delivering an exception, so without this reset the
        CPU would think it is still inside one and turn the next fault into a #DF.
        """
        if self.layout is None:
            return 0, False
        layout = self.layout
        state, shift = self._fields()
        errcode = struct.unpack_from("<I", state, layout.error_code - shift)[0]
        software = struct.unpack_from("<i", state, layout.exception_is_int - shift)[0] == 1
        struct.pack_into("<i", state, layout.old_exception - shift, -1)
        self._edited()
        return errcode, software

    def drop_to_ring0(self) -> None:
        """Clear the CPL bits of hflags: the only way back to ring 0 without a gate."""
        if self.layout is None:
            raise CalibrationError("the probe cannot leave its ring: no layout yet")
        state, shift = self._fields()
        hflags = struct.unpack_from("<I", state, self.layout.hflags - shift)[0]
        struct.pack_into("<I", state, self.layout.hflags - shift, hflags & ~HF_CPL_MASK)
        self._edited()

    def words(self) -> tuple[int, ...]:
        """The whole blob as 32-bit words (what the probe compares)."""
        blob = bytes(self.blob())
        return struct.unpack_from(f"<{len(blob) // 4}I", blob)


def close_engine(uc: Uc) -> None:
    """Close a Unicorn engine now, instead of whenever the cycle collector frees it.

    The binding closes the engine in a finalizer it keeps privately; calling that
    finalizer closes it once, and the binding will not close it a second time.
    Each engine holds its translation buffer (tens of MiB of address space), so a
    Launcher that restarts its Guest must not wait for the collector.
    """
    finalizer = getattr(uc, "_Uc__finalizer", None)
    if finalizer is None:
        raise CalibrationError("this Unicorn binding has no finalizer to close its engine with")
    finalizer()


_layout: ContextLayout | None = None


def context_layout() -> ContextLayout:
    """The calibrated context-blob offsets (measured once per process)."""
    global _layout
    if _layout is None:
        _layout = calibrate()
    return _layout


class _NoPaging:
    """The calibration probe's MMU: every address maps to itself."""

    def translate(self, vaddr: int, write: bool, fetch: bool, user: bool) -> tuple[int, int]:
        return vaddr & ~0xFFF, UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC

    def peek(self, vaddr: int) -> int:
        return vaddr


class _NoPorts:
    def port_in(self, port: int, size: int) -> int:
        return 0xFFFFFFFF

    def port_out(self, port: int, size: int, value: int) -> bool:
        return True


# The probe: at ring 1, load three bad selectors into %ds (three #GPs with known
# error codes), then `iret` to ring 3 and stop there with `int3`.
_FLAT_CODE_DPL3 = segment_descriptor(0, 0xFFFFF, 0xFB)
_FLAT_DATA_DPL3 = segment_descriptor(0, 0xFFFFF, 0xF3)
_PROBE_BASE = 0x1000
_PROBE_SELECTORS = (0x13, 0x1B, 0x23)


def _probe_code() -> bytes:
    code = b""
    for sel in _PROBE_SELECTORS:
        code += b"\xb8" + struct.pack("<I", sel) + b"\x8e\xd8"  # mov $sel,%eax; mov %eax,%ds
    ring3 = _PROBE_BASE + len(code) + 23
    code += b"\x6a" + bytes([abi.USER_DS])  # push $USER_DS (ss)
    code += b"\x68" + struct.pack("<I", 0x3000)  # push $esp
    code += b"\x68" + struct.pack("<I", 0x202)  # push $eflags
    code += b"\x6a" + bytes([abi.USER_CS])  # push $USER_CS
    code += b"\x68" + struct.pack("<I", ring3)  # push $eip
    code += b"\xcf" + b"\x90" * 3  # iret (+ padding up to ring3)
    code += b"\xcc\xeb\xfe"  # int3; jmp .
    return code


def calibrate() -> ContextLayout:
    """Find the fields the Host needs in Unicorn's saved-context blob.

    Their offsets depend on how Unicorn was built, so we measure them with a probe:
    three #GPs with known selectors (the error code is the selector with RPL
    cleared; the in-flight field holds 13 after the first), then an `iret` to
    ring 3 and an `int3` there (the CPL bits of hflags follow the ring, and the
    "raised by int" flag sits just before the known return address).  The three
    #GPs in a row also prove the in-flight reset works: without it the second
    would be reported as a #DF.
    """
    from lguest.host.switcher import Switcher  # the probe runs on a Switcher of its own

    ram = ctypes.create_string_buffer(0x4000)
    cpu = Switcher(ctypes.addressof(ram), 0x4000, _NoPaging(), _NoPorts(), probing=True)
    try:
        return _measure(cpu)
    finally:
        cpu.close()


def _measure(cpu: Switcher) -> ContextLayout:
    code = _probe_code()
    cpu.uc.mem_write(_PROBE_BASE, code)
    for index, desc in enumerate((abi.FLAT_CODE_DPL1, abi.FLAT_DATA_DPL1, _FLAT_CODE_DPL3,
                                  _FLAT_DATA_DPL3), start=abi.GDT_ENTRY_KERNEL_CS):
        cpu.gdt[index] = desc
    cpu.write_gdt()
    context = cpu.context
    idle = context.words()
    cpu.load_frame(_PROBE_BASE, abi.KERNEL_CS, abi.INITIAL_EFLAGS, 0x2000, abi.KERNEL_DS,
                   abi.KERNEL_DS, abi.KERNEL_DS, 0, 0)
    errors: set[int] | None = None
    in_flight: set[int] | None = None
    for sel in _PROBE_SELECTORS:
        blob = _run_probe_step(cpu, abi.Trap.GP)
        matches = {i for i, v in enumerate(blob) if v == sel & 0xFFFC}
        errors = matches if errors is None else errors & matches
        if in_flight is None:
            in_flight = {i for i, v in enumerate(blob) if v == abi.Trap.GP and idle[i] == 0xFFFFFFFF}
        for i in in_flight:
            struct.pack_into("<i", context.blob(), 4 * i, -1)
            context.commit()
        ring1 = blob
        cpu.set("eip", cpu.get("eip") + 2)  # past the faulting mov to %ds
    ring3 = _run_probe_step(cpu, abi.Trap.BP)
    next_eip = _PROBE_BASE + len(code) - 2
    hflags = [i for i in range(len(ring3)) if ring1[i] & 3 == 1 and ring3[i] & 3 == 3
              and ring1[i] & ~3 == ring3[i] & ~3 and ring1[i] & HF_PE_MASK]
    is_int = [i for i in range(len(ring3) - 2) if ring3[i] == 1 and ring1[i] == 0
              and next_eip in (ring3[i + 1], ring3[i + 2])]
    found = [errors or set(), in_flight or set(), set(hflags), set(is_int)]
    if any(len(f) != 1 for f in found):
        raise CalibrationError("cannot locate the CPU fields in Unicorn's saved context "
                               f"(candidates: {[len(f) for f in found]})")
    error_code, old_exception, hflags_word, is_int_word = (4 * next(iter(f)) for f in found)
    return ContextLayout(hflags_word, old_exception, error_code, is_int_word)


def _run_probe_step(cpu: Switcher, expected: int) -> tuple[int, ...]:
    exit_ = cpu.run()
    if exit_.trapnum != expected:
        got = exit_.trapnum
        raise CalibrationError(f"calibration probe expected trap {expected}, got {got}")
    return cpu.context.words()


# tour:S.140 Workaround: the exit checks, switched off where proven
# Unicorn translates a check for a pending stop after every guest load and store, so that
# `uc_emu_stop` takes effect at once.  Those checks cost the Guest a third of its compute,
# and they are what makes a stop from another thread unsafe: one landing inside our hooks
# abandons the instruction half done ("The doorbell").  Unicorn has a field that leaves them
# out of translation, `no_exit_request` (there so an ARM IT block translates as one piece),
# but it is not API and its offset depends on the build.  So: a candidate from machine
# code (the byte just before `init_done`, which `uc_emu_stop` tests first thing), then a
# measurement: a block whose MMIO read asks to stop.  With the checks the stop lands at the
# read, which is undone; with the candidate set the rest of the block runs first.  Only if
# both runs come out exactly so does any Switcher set it; otherwise the answer is None and
# the doorbell keeps its hook before every block.  A debugger, which stops the CPU from
# inside its hooks at one instruction, needs the checks: its first breakpoint or watchpoint
# turns them back on, and the per-block doorbell with them, for good.
# How `if (!uc->init_done)` reads in x86-64 code, the engine pointer in its first argument.
_INIT_DONE_TEST = re.compile(r"byte ptr \[rdi \+ (0x[0-9a-f]+)\], 0$")
_PROLOGUE_BYTES = 48

# The probe: `mov 0x2000,%eax` (an MMIO read that asks to stop), two `inc %ebx`,
# then a jump that ends the block, and a third `inc %ebx` in the next block.
_EXIT_PROBE_CODE = 0x1000
_EXIT_PROBE_MMIO = 0x2000
_EXIT_PROBE = bytes.fromhex("a1 00 20 00 00 43 43 eb 00 43 f4".replace(" ", ""))
_EXIT_PROBE_NEXT_BLOCK = _EXIT_PROBE_CODE + 9


def _no_exit_request_candidate() -> int | None:
    """The offset of `no_exit_request` as `uc_emu_stop`'s code suggests it."""
    address = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
    if address is None:
        return None
    try:
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(ctypes.string_at(address, _PROLOGUE_BYTES), address):
            match = _INIT_DONE_TEST.match(insn.op_str) if insn.mnemonic == "cmp" else None
            if match:
                return int(match.group(1), 16) - 1
    except CsError:
        return None
    return None


def _engine_byte(uc: Uc, offset: int) -> ctypes.c_uint8:
    return ctypes.c_uint8.from_address((ctypes.cast(uc._uch, ctypes.c_void_p).value or 0) + offset)


def exit_probe(offset: int | None) -> tuple[int, int]:
    """(EIP, EBX) after the probe block's MMIO read asked to stop, with
    `no_exit_request` set at `offset` (None: left alone)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    if offset is not None:
        _engine_byte(uc, offset).value = 1
    uc.mem_map(_EXIT_PROBE_CODE, 0x1000, UC_PROT_ALL)
    uc.mem_write(_EXIT_PROBE_CODE, _EXIT_PROBE)
    uc.mmio_map(_EXIT_PROBE_MMIO, 0x1000, lambda engine, *_: engine.emu_stop() or 0, None,
                lambda *_: None, None)
    uc.emu_start(_EXIT_PROBE_CODE, _EXIT_PROBE_CODE + len(_EXIT_PROBE))
    return uc.reg_read(UC_X86_REG_EIP), uc.reg_read(UC_X86_REG_EBX)


EXIT_PROBE_CHECKED = (_EXIT_PROBE_CODE, 0)  # stopped at the read, undone
EXIT_PROBE_QUIET = (_EXIT_PROBE_NEXT_BLOCK, 2)  # stopped where the next block starts


def _plausible(offset: int) -> bool:
    """Before we write anything there: the field is off and init_done, after it, is on."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(_EXIT_PROBE_CODE, 0x1000, UC_PROT_ALL)  # any call initialises the engine
    return _engine_byte(uc, offset).value == 0 and _engine_byte(uc, offset + 1).value == 1


def calibrate_exit_checks() -> int | None:
    """The offset of `no_exit_request`, proven by measurement, or None."""
    offset = _no_exit_request_candidate()
    if offset is None or not _plausible(offset):
        return None
    try:
        if exit_probe(None) != EXIT_PROBE_CHECKED or exit_probe(offset) != EXIT_PROBE_QUIET:
            return None
    except UcError:
        return None
    return offset


_UNKNOWN = -1
_no_exit_request = _UNKNOWN


def quiet_exit_checks(uc: Uc) -> bool:
    """Translate this engine's blocks without per-access exit checks (before it
    runs anything), if calibration found the switch (measured once per process):
    then a stop lands only where a block starts."""
    global _no_exit_request
    if _no_exit_request == _UNKNOWN:
        _no_exit_request = calibrate_exit_checks()
    if _no_exit_request is None:
        return False
    _engine_byte(uc, _no_exit_request).value = 1
    return True


def restore_exit_checks(uc: Uc) -> None:
    """Translate this engine's blocks with per-access exit checks again (blocks
    already translated keep what they have: the caller flushes them)."""
    if _no_exit_request not in (_UNKNOWN, None):
        _engine_byte(uc, _no_exit_request).value = 0


# tour:S.145 Workaround: where the engine keeps its CPU, measured
# The native path calls two of QEMU's own functions from inside our C hooks: the one that
# delivers an exception through the IDT (`x86_cpu_do_interrupt`) and the one that drops one
# page from the TLB (`tlb_flush_page`).  Both are exported by the library, but take the
# engine's CPU, which the API never hands out.  `uc_reg_read` fetches it on every call (the
# engine's CPU pointer, then that CPU's pointer to its register state), so its machine code
# gives the two offsets.  They are believed only when proven on the engine itself: the
# state the second pointer names must be, byte for byte, what `uc_context_save` copies out.
# Without the proof the native path leaves delivery and SET_PTE to Python.
_CPU_LOAD = re.compile(r"qword ptr \[(r[a-z0-9]+) \+ (0x[0-9a-f]+)\]$")


@dataclass(frozen=True)
class EngineCpu:
    """One engine's CPU, as QEMU's functions take it, and its register state."""

    cpu: int  # the CPUState (X86CPU) pointer
    env: int  # the CPUX86State inside it: the saved-context blob's data, live
    blob_header: int  # where that data starts in the saved-context blob

    def env_offset(self, blob_offset: int) -> int:
        """A field's offset in the live state, from its offset in the blob (ContextLayout)."""
        return blob_offset - self.blob_header


def _cpu_offsets_candidate() -> tuple[int, int] | None:
    """(engine → CPU, CPU → register state) offsets as `uc_reg_read`'s code suggests them."""
    address = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
    if address is None:
        return None
    loads: dict[str, int] = {}  # register -> offset it was loaded from, off the engine pointer
    try:
        code = ctypes.string_at(address, _PROLOGUE_BYTES * 2)
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, address):
            if insn.mnemonic == "call":
                return None
            match = _CPU_LOAD.search(insn.op_str) if insn.mnemonic == "mov" else None
            if match is None:
                continue
            target, base, offset = insn.op_str.split(",")[0], match.group(1), int(match.group(2), 16)
            if base in loads and target == "rdi":  # the register state, first argument of reg_read
                return loads[base], offset
            if base in ("rdi", "rbx"):
                loads[target] = offset
    except CsError:
        return None
    return None


def _process_memory(address: int, size: int) -> bytes | None:
    """Read our own memory where a wrong pointer must not crash us (EIO, not SIGSEGV)."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            data = os.pread(mem.fileno(), size, address)
    except (OSError, OverflowError, ValueError):
        return None
    return data if len(data) == size else None


_cpu_offsets: tuple[int, int] | None | int = _UNKNOWN


def engine_cpu(uc: Uc) -> EngineCpu | None:
    """This engine's CPU pointers, proven, or None (then nothing native may use them)."""
    global _cpu_offsets
    if _cpu_offsets == _UNKNOWN:
        _cpu_offsets = _cpu_offsets_candidate()
    if not isinstance(_cpu_offsets, tuple):
        return None
    to_cpu, to_env = _cpu_offsets
    engine = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
    cpu_word = _process_memory(engine + to_cpu, 8)
    cpu = struct.unpack("<Q", cpu_word)[0] if cpu_word else 0
    env_word = _process_memory(cpu + to_env, 8) if cpu else None
    env = struct.unpack("<Q", env_word)[0] if env_word else 0
    if not cpu < env < cpu + (1 << 20):  # the register state is inside the CPU object
        return None
    context = uc_context()
    if uclib.uc_context_alloc(uc._uch, ctypes.byref(context)):
        return None
    try:
        uclib.uc_context_save(uc._uch, context)
        size = uclib.uc_context_size(uc._uch)
        blob = ctypes.string_at(context.value or 0, size)
    finally:
        uclib.uc_context_free(context)
    state_size = struct.unpack_from("<Q", blob)[0]
    header = size - state_size
    if not 0 < header < size or _process_memory(env, state_size) != blob[header:]:
        return None
    return EngineCpu(cpu, env, header)


# QEMU keeps the CPU's segment caches (selector, base, limit, flags: its SegmentCache) right
# after hflags and hflags2, ES, CS, SS, DS, FS, GS, then the LDT and TR.  interrupts.c reads
# CS's and SS's to see that the Guest's stack and code are flat before the CPU delivers a
# trap; the offset is believed only when the caches hold the segments the Switcher loaded.
SEGMENT_CACHE = struct.Struct("<I4xQII")
SEGMENT_CACHES = 8  # segs[6], ldt, tr


def segment_caches(cpu: EngineCpu, layout: ContextLayout,
                   expected: dict[int, tuple[int, int, int]]) -> int | None:
    """The segment caches' offset in the live state, or None if `expected` (index →
    selector, base, limit, for registers the CPU holds now) is not what is there."""
    offset = cpu.env_offset(layout.hflags) + 8
    data = _process_memory(cpu.env + offset, SEGMENT_CACHE.size * SEGMENT_CACHES)
    if data is None:
        return None
    for index, (selector, base, limit) in expected.items():
        found, found_base, found_limit, _ = SEGMENT_CACHE.unpack_from(data, SEGMENT_CACHE.size * index)
        if (found & 0xFFFF, found_base, found_limit) != (selector, base, limit):
            return None
    return offset


# Unicorn's TLB-fill hook is told only the page, but QEMU's CPU class hands the exact address
# to its `tlb_fill` function, which Unicorn (in its virtual-TLB mode) points at its own
# `unicorn_fill_tlb`, right before `tlb_fill_cpu`, QEMU's own x86 one.  The class lies inside
# the CPU object, after the register state, and the CPUState part (before the register
# state) points at it.  So the field is the first place after the register state holding that
# pair of exported functions side by side, believed only if a pointer in the CPUState part
# leads to the class a little before it; exact_fill.c puts its own function there.  The
# offset found in the first engine is checked again (the pair there) in every later one.
_CPU_OBJECT_MAX = 1 << 20
_CLASS_REACH = 0x200  # how far into the class the field may lie

def fill_function_slot(cpu: EngineCpu) -> int | None:
    """Where this engine's CPU class keeps its tlb_fill pointer, proven, or None."""
    global _fill_slot_offset
    fill = getattr(uclib, "unicorn_fill_tlb_x86_64", None)
    own = getattr(uclib, "x86_cpu_tlb_fill_x86_64", None)
    if fill is None or own is None:
        return None
    pair = struct.pack("<QQ", ctypes.cast(fill, ctypes.c_void_p).value or 0,
                       ctypes.cast(own, ctypes.c_void_p).value or 0)
    if _fill_slot_offset == _UNKNOWN:
        _fill_slot_offset = _only_place(cpu, pair)
    if not isinstance(_fill_slot_offset, int) or _fill_slot_offset < 0:
        return None
    if _process_memory(cpu.cpu + _fill_slot_offset, len(pair)) != pair:
        return None
    return cpu.cpu + _fill_slot_offset


def _only_place(cpu: EngineCpu, pair: bytes) -> int | None:
    """The offset from the CPU of its class's copy of `pair` (see above), or None."""
    size = _CPU_OBJECT_MAX
    data = None
    while data is None and size >= 1 << 12:
        data = _process_memory(cpu.cpu, size)
        size //= 2
    state = cpu.env - cpu.cpu
    found = [at for at in _occurrences(data or b"", pair) if at % 8 == 0 and at > state]
    if not found:
        return None
    slot = cpu.cpu + found[0]
    pointers = struct.unpack_from(f"<{state // 8}Q", data or b"")
    return found[0] if any(slot - _CLASS_REACH <= p <= slot for p in pointers) else None


def _occurrences(data: bytes, pattern: bytes) -> list[int]:
    found, at = [], data.find(pattern)
    while at >= 0:
        found.append(at)
        at = data.find(pattern, at + 1)
    return found


_fill_slot_offset: int | None = _UNKNOWN


# irqs.c has the CPU itself deliver the clock's and the devices' interrupts.  It needs three
# things QEMU keeps to itself.  The CPU class's `cpu_exec_interrupt`, which QEMU calls at a
# block boundary whenever the CPU's interrupt_request is set: found like `tlb_fill` above, as
# the one place after the register state where x86's three exported `cpu_exec_enter`,
# `cpu_exec_exit` and `cpu_exec_interrupt` sit side by side.  The CPU's interrupt_request:
# QEMU's own raise (`cpu_interrupt_handler`, exported) is called on the idle engine, and the
# one word of the CPUState it changed is the field.  And the counter whose high half stops
# the chaining of blocks (the CPUState names it right after the register state's pointer):
# QEMU's `cpu_exit` must set that half to -1.  Every byte either call changed is put back.
_CPU_INTERRUPT_HARD = 0x0002


@dataclass(frozen=True)
class CpuInterrupts:
    """Where one engine's CPU keeps what a raised interrupt touches (all proven)."""

    exec_interrupt_slot: int  # the CPU class's cpu_exec_interrupt pointer
    x86_exec_interrupt: int  # what it held: QEMU's x86_cpu_exec_interrupt
    interrupt_request: int  # the CPUState's interrupt_request (uint32)
    icount_high: int  # the high half of its instruction counter (int16)


def cpu_interrupts(cpu: EngineCpu) -> CpuInterrupts | None:
    """This idle engine's interrupt fields, proven, or None."""
    names = ("x86_cpu_exec_enter_x86_64", "x86_cpu_exec_exit_x86_64", "x86_cpu_exec_interrupt_x86_64")
    functions = [getattr(uclib, name, None) for name in names]
    handler = _exported_pointer("cpu_interrupt_handler")
    cpu_exit = getattr(uclib, "cpu_exit", None)
    if None in functions or handler is None or cpu_exit is None:
        return None
    addresses = [ctypes.cast(f, ctypes.c_void_p).value or 0 for f in functions]
    at = _only_place(cpu, struct.pack("<3Q", *addresses))
    if at is None:
        return None
    state = cpu.env - cpu.cpu  # the CPUState, and what lies between it and the registers
    request = _changed_word(cpu.cpu, state, lambda: ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)(
        handler)(cpu.cpu, _CPU_INTERRUPT_HARD), _CPU_INTERRUPT_HARD)
    icount = _icount_high(cpu, cpu_exit)
    if request is None or icount is None:
        return None
    return CpuInterrupts(cpu.cpu + at + 16, addresses[2], request, icount)


def _exported_pointer(name: str) -> int | None:
    """The value of an exported pointer variable of the library."""
    try:
        return ctypes.c_void_p.in_dll(uclib, name).value
    except ValueError:
        return None


def _around(start: int, size: int, action: Callable[[], object]) -> tuple[bytes, bytes] | None:
    """Our memory [start, start+size) before and after `action`, which is then undone:
    every byte is put back."""
    before = _process_memory(start, size)
    if before is None:
        return None
    action()
    after = _process_memory(start, size)
    ctypes.memmove(start, before, size)
    return None if after is None else (before, after)


def _changed_word(start: int, size: int, action: Callable[[], object], bit: int) -> int | None:
    """The address of the one aligned 32-bit word in [start, start+size) that `action`
    changed, by setting `bit` and nothing else; every change is undone."""
    seen = _around(start, size, action)
    if seen is None:
        return None
    before, after = seen
    changed = [at for at in range(0, size - 3, 4) if before[at:at + 4] != after[at:at + 4]]
    if len(changed) != 1:
        return None
    old, new = (struct.unpack_from("<I", data, changed[0])[0] for data in (before, after))
    return start + changed[0] if new == old | bit and old & bit == 0 else None


def _icount_high(cpu: EngineCpu, cpu_exit: object) -> int | None:
    """The high half of the counter the CPUState's icount_decr_ptr names (the word right
    after its pointer to the registers), proven by `cpu_exit` setting it to -1."""
    state = cpu.env - cpu.cpu
    leave = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.cast(cpu_exit, ctypes.c_void_p).value)
    seen = _around(cpu.cpu, state, lambda: leave(cpu.cpu))
    if seen is None:
        return None
    before, after = seen
    env_ptr = [at for at in range(0, state - 15, 8) if struct.unpack_from("<Q", before, at)[0] == cpu.env]
    if len(env_ptr) != 1:
        return None
    high = struct.unpack_from("<Q", before, env_ptr[0] + 8)[0] + 2 - cpu.cpu
    if not 2 <= high <= state - 2:
        return None
    put_back = _process_memory(cpu.cpu + high, 2) == before[high:high + 2]
    return cpu.cpu + high if after[high:high + 2] == b"\xff\xff" and put_back else None
