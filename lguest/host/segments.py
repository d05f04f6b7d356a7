"""Segments: the Guest's GDT, held by the Host (mirrors segments.c, spec §5).

The Guest never loads a GDT itself: it hands us descriptors one at a time
(LOAD_GDT_ENTRY) or three TLS entries at once (LOAD_TLS).  We keep its 32-entry
copy and build the real GDT the emulated CPU uses from it, except the entries
the Switcher owns (its ring-0 code and data, the TSS, the double-fault TSS).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from lguest import abi
from lguest.host.memory import GuestMemory

if TYPE_CHECKING:
    from lguest.host.native_hypercalls import NativeHypercalls

DESC_S = 1 << 12  # code/data descriptor (clear for TSS, LDT and gates)
DESC_DPL_SHIFT = 13
DESC_ACCESSED = 1 << 8


class RealGdt(Protocol):
    """The GDT the emulated CPU really reads (the Switcher's, which owns some entries)."""

    gdt: list[tuple[int, int]]

    def write_gdt(self) -> None: ...


def segment_descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> tuple[int, int]:
    """An 8-byte GDT descriptor as (low dword, high dword)."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (
        ((base >> 16) & 0xFF)
        | (access << 8)
        | (((limit >> 16) & 0xF) << 16)
        | (flags << 20)
        | (base & 0xFF000000)
    )
    return lo, hi


def fix_descriptor(hi: int) -> int:
    """The Guest's kernel runs at ring 1: DPL 0 becomes 1, and mark it accessed.

    Accessed, so the CPU never needs to write the (read-only) GDT when a segment
    is loaded.  DPL 2 and 3 are left as the Guest wrote them.
    """
    if (hi >> DESC_DPL_SHIFT) & 3 == 0:
        hi |= abi.GUEST_PL << DESC_DPL_SHIFT
    return hi | DESC_ACCESSED


def installable(hi: int) -> bool:
    """May this descriptor reach the real GDT?

    Deliberate difference from lguest: system descriptors (TSS, LDT, call and task
    gates) are never installed.  A call gate or a TSS of the Guest's would be a
    door into ring 0 of the emulated CPU, where only the Switcher may run.
    """
    return bool(hi & DESC_S)


# tour:H.100 Segments: the Guest's GDT, filtered
# The Guest cannot load a GDT: the real one belongs to the Switcher, which keeps its own
# ring-0 code and data and the TSS in it.  The Guest hands descriptors over by hypercall,
# one at a time or its three TLS entries at once, and the Host keeps the Guest's copy and
# builds the real GDT from it.  Two fixes on the way: a descriptor of privilege 0 becomes 1
# (the Guest's kernel runs in ring 1, and it must be able to load its own segments), and
# each is marked accessed, so the CPU never writes to the read-only GDT.  Unlike lguest, a
# system descriptor (a TSS, an LDT, a gate) is never installed: on our CPU it would be a way
# into ring 0.
class Segments:
    """The Guest's 32 GDT entries, and copying them into the real one."""

    def __init__(self, memory: GuestMemory, kill: Callable[[str], None], real: RealGdt) -> None:
        self.memory = memory
        self.kill = kill
        self.real = real
        self._gdt: list[tuple[int, int]] = [(0, 0)] * abi.GDT_ENTRIES
        # §3.4: only the kernel code and data entries exist at first.
        self._gdt[abi.GDT_ENTRY_KERNEL_CS] = abi.FLAT_CODE_DPL1
        self._gdt[abi.GDT_ENTRY_KERNEL_DS] = abi.FLAT_DATA_DPL1
        # The native path's hypercalls (native_hypercalls.py): C serves LOAD_TLS, writing
        # the real GDT itself, and keeps the descriptors for `gdt` to take.
        self.native: NativeHypercalls | None = None
        self.copy_to_cpu()

    def let_native_load_tls(self, native: NativeHypercalls) -> None:
        """From now on C serves LOAD_TLS too."""
        self.native = native

    @property
    def gdt(self) -> list[tuple[int, int]]:
        """The Guest's 32 entries (with the TLS ones of a LOAD_TLS C served)."""
        loaded = self.native.take_tls() if self.native is not None else None
        if loaded is not None:
            # C wrote the real GDT already, by the rules below (hypercalls.c).
            for num, (lo, hi) in enumerate(loaded, abi.GDT_ENTRY_TLS_MIN):
                self._gdt[num] = lo, hi
                self.real.gdt[num] = (lo, hi) if installable(hi) else (0, 0)
        return self._gdt

    def base(self, selector: int) -> int:
        """The base address of the segment a selector names (0 for the null selector)."""
        lo, hi = self.gdt[(selector >> 3) % abi.GDT_ENTRIES] if selector >> 2 else (0, 0)
        return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)

    def load_gdt_entry(self, num: int, lo: int, hi: int) -> None:
        """LOAD_GDT_ENTRY (§5.2)."""
        if num >= abi.GDT_ENTRIES:
            self.kill(f"too many gdt entries {num}")
            return
        self._store(num, lo, hi)
        self.copy_to_cpu()

    def load_tls(self, gpa: int) -> None:
        """LOAD_TLS (§5.3): three descriptors from Guest memory into entries 6..8."""
        size = 8 * abi.GDT_ENTRY_TLS_ENTRIES
        data = self.memory.read(gpa, size)
        if not self.memory.ok(gpa, size):
            return  # the read killed the Guest
        for i in range(abi.GDT_ENTRY_TLS_ENTRIES):
            lo, hi = struct.unpack_from("<II", data, 8 * i)
            self._store(abi.GDT_ENTRY_TLS_MIN + i, lo, hi)
        self.copy_to_cpu()

    def _store(self, num: int, lo: int, hi: int) -> None:
        if num not in abi.HOST_OWNED_GDT_ENTRIES:
            hi = fix_descriptor(hi)
        self.gdt[num] = (lo, hi)  # after a LOAD_TLS C served, whose other entries stay

    def copy_to_cpu(self) -> None:
        """Build the real GDT: the Guest's entries, the Switcher's own where it owns them."""
        for num, (lo, hi) in enumerate(self.gdt):
            if num in abi.HOST_OWNED_GDT_ENTRIES:
                continue
            self.real.gdt[num] = (lo, hi) if installable(hi) else (0, 0)
        self.real.write_gdt()
