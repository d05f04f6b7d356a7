"""Segments: the Guest's GDT, held by the Host (segments.c, spec §5).

The Guest never loads a GDT itself: it hands us descriptors one at a time
(LOAD_GDT_ENTRY) or three TLS entries at once (LOAD_TLS).  We keep its 32-entry
copy and build the real GDT the emulated CPU uses from it, except the entries
the Switcher owns (its ring-0 code and data, the TSS, the double-fault TSS).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from lguest import abi

if TYPE_CHECKING:
    from lguest.host.core import Guest

DESC_S = 1 << 12  # code/data descriptor (clear for TSS, LDT and gates)
DESC_DPL_SHIFT = 13
DESC_ACCESSED = 1 << 8


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


class Segments:
    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.gdt: list[tuple[int, int]] = [(0, 0)] * abi.GDT_ENTRIES
        # §3.4: only the kernel code and data entries exist at first.
        self.gdt[abi.GDT_ENTRY_KERNEL_CS] = abi.FLAT_CODE_DPL1
        self.gdt[abi.GDT_ENTRY_KERNEL_DS] = abi.FLAT_DATA_DPL1
        self.copy_to_cpu()

    def base(self, selector: int) -> int:
        """The base address of the segment a selector names (0 for the null selector)."""
        lo, hi = self.gdt[(selector >> 3) % abi.GDT_ENTRIES] if selector >> 2 else (0, 0)
        return (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)

    def load_gdt_entry(self, num: int, lo: int, hi: int) -> None:
        """LOAD_GDT_ENTRY (§5.2)."""
        if num >= abi.GDT_ENTRIES:
            self.guest.kill(f"too many gdt entries {num}")
            return
        self._store(num, lo, hi)
        self.copy_to_cpu()

    def load_tls(self, gpa: int) -> None:
        """LOAD_TLS (§5.3): three descriptors from Guest memory into entries 6..8."""
        data = self.guest.mem.read(gpa, 8 * abi.GDT_ENTRY_TLS_ENTRIES)
        if self.guest.dead:
            return
        for i in range(abi.GDT_ENTRY_TLS_ENTRIES):
            lo, hi = struct.unpack_from("<II", data, 8 * i)
            self._store(abi.GDT_ENTRY_TLS_MIN + i, lo, hi)
        self.copy_to_cpu()

    def _store(self, num: int, lo: int, hi: int) -> None:
        if num not in abi.HOST_OWNED_GDT_ENTRIES:
            hi = fix_descriptor(hi)
        self.gdt[num] = (lo, hi)

    def copy_to_cpu(self) -> None:
        """Build the real GDT: the Guest's entries, the Switcher's own where it owns them."""
        cpu = self.guest.cpu
        for num, (lo, hi) in enumerate(self.gdt):
            if num in abi.HOST_OWNED_GDT_ENTRIES:
                continue
            cpu.gdt[num] = (lo, hi) if installable(hi) else (0, 0)
        cpu.write_gdt()
