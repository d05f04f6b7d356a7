"""Which byte a page fault was about: the CR2 the Guest must see (no lguest
counterpart: a real CPU sets CR2, and lguest's Switcher just saved it).

The emulator's TLB-fill hook only tells us the page that missed, but a Guest's
page-fault handler needs the exact address (Linux checks, for instance, how far
below the stack pointer a fault is before it grows a stack).  So for a refused
access we decode the faulting instruction (capstone) and work out the address
it used: its explicit memory operand, or the stack slot that push/pop/call/ret
touch.  If the access straddled into the faulting page, the fault is at that
page's first byte, as on a real CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import capstone
from capstone import x86_const as X86

_decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_decoder.detail = True

_REGS = {
    X86.X86_REG_EAX: "eax", X86.X86_REG_EBX: "ebx", X86.X86_REG_ECX: "ecx", X86.X86_REG_EDX: "edx",
    X86.X86_REG_ESI: "esi", X86.X86_REG_EDI: "edi", X86.X86_REG_EBP: "ebp", X86.X86_REG_ESP: "esp",
}
_SEGMENTS = {X86.X86_REG_FS: "fs", X86.X86_REG_GS: "gs", X86.X86_REG_ES: "es", X86.X86_REG_DS: "ds",
             X86.X86_REG_SS: "ss", X86.X86_REG_CS: "cs"}
_PUSHES = {"push", "pushal", "pushfd", "call", "enter", "pushf", "pusha"}
_POPS = {"pop", "popal", "popfd", "ret", "retf", "iretd", "popf", "popa", "leave"}


# tour:S.100 Workaround: the exact CR2
# The TLB-fill hook only says which page missed, but a Guest's fault handler needs the byte:
# Linux grows a stack only if the fault is close enough below the stack pointer, and it
# reports a user's bad pointer by its address.  So the Host decodes the faulting instruction
# (capstone), computes the address of each memory operand it has (base, index, scale,
# displacement and segment base), and the stack slot that push, pop, call and ret use, and
# picks the one on the faulting page.  An access that straddles into the page faults at the
# page's first byte, as on a real CPU; an instruction fetch faults at EIP itself.  (On the
# native path the emulator says the address itself, and this is the fallback: exact_fill.py.)
def fault_address(page: int, eip: int, code: bytes, fetch: bool, reg: Callable[[str], int],
                  segment_base: Callable[[str], int]) -> int:
    """The faulting linear address inside `page` (falls back to the page itself)."""
    if fetch:
        return eip if eip & ~0xFFF == page else page
    for start, size in _accesses(_operands(code, eip), reg, segment_base):
        start &= 0xFFFFFFFF
        if start & ~0xFFF == page:
            return start
        if start < page < start + size:
            return page
    return page


def decode(code: bytes, eip: int) -> capstone.CsInsn | None:
    """The instruction `code` starts with (it sits at `eip`), or None if it is not one.

    The one x86 decoder of the project: the Launcher's --trace lines use it too.
    """
    return next(_decoder.disasm(code, eip, count=1), None)


class _Operand(NamedTuple):
    """A memory access an instruction makes, before the registers are known."""

    disp: int
    base: str | None
    index: str | None
    scale: int
    segment: str | None
    size: int


# A Guest faults again and again at the same few instructions (a page copy, a user's
# first touch of its stack), and decoding costs more than all the rest of a fault: the
# operands are kept per instruction (its bytes and where it sits).
@lru_cache(maxsize=4096)
def _operands(code: bytes, eip: int) -> tuple[_Operand, ...]:
    """Every memory access of the instruction `code` starts with that we can name: its
    memory operands, then the stack slot a push, pop or `leave` uses."""
    insn = decode(code, eip)
    if insn is None:
        return ()
    found = [_Operand(op.mem.disp, _REGS.get(op.mem.base), _REGS.get(op.mem.index), op.mem.scale,
                      _SEGMENTS.get(op.mem.segment), op.size or 4)
             for op in insn.operands if op.type == X86.X86_OP_MEM]
    if insn.mnemonic in _PUSHES:
        found.append(_Operand(-4, "esp", None, 1, None, 4))
    elif insn.mnemonic == "leave":
        found.append(_Operand(0, "ebp", None, 1, None, 4))
    elif insn.mnemonic in _POPS:
        found.append(_Operand(0, "esp", None, 1, None, 4))
    return tuple(found)


def _accesses(operands: tuple[_Operand, ...], reg: Callable[[str], int],
              segment_base: Callable[[str], int]) -> list[tuple[int, int]]:
    """(address, size) of each access, with the registers as they are now."""
    found = []
    for op in operands:
        address = op.disp
        if op.base is not None:
            address += reg(op.base)
        if op.index is not None:
            address += reg(op.index) * op.scale
        if op.segment is not None:
            address += segment_base(op.segment)
        found.append((address, op.size))
    return found
