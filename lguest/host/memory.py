"""Guest-physical memory as the Host sees it: one shared mapping, bounds-checked
(mirrors lguest_address_ok, lgread and lgwrite of core.c and lg.h).

Every Host access to Guest RAM by guest-physical address goes through here, so a
Guest can never make the Host read or write outside its RAM: a bad address kills
the Guest with the spec's message (§6.9) instead.

Addresses in kill messages are what the Guest's 32-bit registers would hold: a
frame pushed below address 0 is at 0xfffffffc, as lguest's unsigned longs said,
never at -0x4 (`hex32`).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable


def hex32(address: int) -> str:
    """An address for a kill message: unsigned 32-bit, wrapped as the CPU would."""
    return f"{address & 0xFFFFFFFF:#x}"


class GuestMemory:
    def __init__(self, ram: mmap.mmap, size: int, kill: Callable[[str], None]) -> None:
        self.ram = ram
        self.size = size  # pfn_limit * PAGE_SIZE: only this much is Guest RAM
        self.kill = kill

    def ok(self, gpa: int, length: int) -> bool:
        return gpa >= 0 and length >= 0 and gpa + length <= self.size

    def read(self, gpa: int, length: int) -> bytes:
        if not self.ok(gpa, length):
            self.kill(f"bad read address {hex32(gpa)} len {length}")
            return bytes(length)
        return self.ram[gpa:gpa + length]

    def write(self, gpa: int, data: bytes) -> bool:
        if not self.ok(gpa, len(data)):
            self.kill(f"bad write address {hex32(gpa)} len {len(data)}")
            return False
        self.ram[gpa:gpa + len(data)] = data
        return True

    def read_u32(self, gpa: int) -> int:
        return struct.unpack("<I", self.read(gpa, 4))[0]

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, struct.pack("<I", value & 0xFFFFFFFF))
