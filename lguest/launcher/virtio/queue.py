"""Split virtqueues (virtio 1.0 spec, section 2.4), as the Launcher's devices consume them.

The Guest puts chains of descriptors in a ring in its own memory; a device takes
them (`pop`), reads the "out" buffers, fills the "in" ones, and hands the chain
back on the used ring (`push`).  Every pointer and index comes from the Guest, so
each is checked (spec §8.4) and a violation ends the Guest with the original's
message: `<dev> vq <name>: bad driver: <msg>`.  Buffers are memoryviews straight
into Guest RAM: no copies.

What a queue guarantees to the device that serves it.  Each rule is checked once,
in the place named after it, and nowhere else:

1. Its size is a power of two from 1 to VIRTQUEUE_NUM (256)   (`check_size`, when the
   Guest writes queue_size; a reset brings back 256).
2. The three rings are aligned (descriptors 16, avail 2, used 4 bytes), their high
   address halves are 0, and each lies wholly inside Guest RAM       (`Virtqueue.check`,
   when the Guest enables the queue; the rings cannot move while it is enabled).
3. The used ring's flags start at 0                                  (`Virtqueue.check`).
4. The Guest's avail index runs at most `size` entries ahead of what we took, and every
   head it offers is below `size`                                    (`Virtqueue.pop`).
5. A chain stays inside its table: every `next` is below the table's length, and it has
   no more links than the table has entries, so a loop ends it       (`Virtqueue._chain`).
6. An indirect table is used only if negotiated, never with NEXT and never nested; it is a
   whole number of descriptors, at most `size` of them               (`Virtqueue._chain`).
7. Readable buffers come before writable ones, and every buffer lies wholly inside
   Guest RAM                                      (`Virtqueue._chain`, `Virtqueue._pointer`).

Only the device writes the used ring, and one thread serves a queue; a rule broken is
a `BadDriver`, which ends the Guest.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lguest import abi
from lguest.launcher.pci import BadDriver

DESC_SIZE = 16
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_RING_F_INDIRECT_DESC = 28


def check_size(size: int) -> None:
    """Rule 1: the only sizes a Guest may choose."""
    if size & (size - 1) or not 0 < size <= abi.VIRTQUEUE_NUM:
        raise BadDriver(f"invalid queue size {size}")


@dataclass
class Chain:
    """One request: its head index, readable ("out") and writable ("in") buffers."""

    head: int
    out: list[memoryview] = field(default_factory=list)
    into: list[memoryview] = field(default_factory=list)

    def out_bytes(self) -> bytes:
        return b"".join(bytes(b) for b in self.out)

    def scatter(self, data: bytes) -> int:
        """Copy data across the writable buffers, in order; how much fitted."""
        written = 0
        for buffer in self.into:
            part = data[written:written + len(buffer)]
            buffer[:len(part)] = part
            written += len(part)
        return written


class Virtqueue:
    def __init__(self, name: str, ram: mmap.mmap, ram_size: int) -> None:
        self.name = name
        self.ram = ram
        self.view = memoryview(ram)
        self.ram_size = ram_size
        self.notified = threading.Event()
        self.on_request: Callable[[Chain], None] | None = None  # --trace-file's timeline
        self.reset()

    def close(self) -> None:
        """Let go of Guest RAM (the machine is being thrown away; no thread serves us)."""
        self.view.release()

    def reset(self) -> None:
        """Back to the state after a device reset (§7.3: size 256, disabled)."""
        self.size = abi.VIRTQUEUE_NUM
        self.enabled = False
        self.desc = self.avail = self.used = 0
        self.high = 0  # OR of the three high halves: must stay 0 on a 32-bit Guest
        self.last_avail = 0
        self.indirect = False  # VIRTIO_RING_F_INDIRECT_DESC negotiated

    # --- snapshots ----------------------------------------------------------------------
    def save_state(self) -> dict[str, int | bool]:
        return {"size": self.size, "enabled": self.enabled, "desc": self.desc, "avail": self.avail,
                "used": self.used, "last_avail": self.last_avail, "indirect": self.indirect}

    def restore_state(self, state: dict[str, int | bool]) -> None:
        """A saved queue, held to the rules it was enabled under (BadDriver if it breaks one)."""
        check_size(int(state["size"]))
        self.size, self.enabled = int(state["size"]), bool(state["enabled"])
        self.desc, self.avail, self.used = int(state["desc"]), int(state["avail"]), int(state["used"])
        self.last_avail, self.indirect = int(state["last_avail"]) & 0xFFFF, bool(state["indirect"])
        if self.enabled:
            self._pointer(self.desc, DESC_SIZE * self.size)
            self._pointer(self.avail, 4 + 2 * self.size)
            self._pointer(self.used, 4 + 8 * self.size)

    def unpop(self) -> None:
        """Give back the chain just taken, untouched: a service thread stopped while it
        waited to fill it (the chain stays the Guest's, to be taken again on resume)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    # --- enabling --------------------------------------------------------------------
    def check(self) -> None:
        """Rules 2 and 3: what the Launcher checks when the Guest enables the queue (§7.3)."""
        if self.high:
            raise BadDriver("invalid 64-bit queue address")
        if self.desc % 16 or self.avail % 2 or self.used % 4:
            raise BadDriver("invalid alignment in queue addresses")
        self._pointer(self.desc, DESC_SIZE * self.size)
        self._pointer(self.avail, 4 + 2 * self.size)
        self._pointer(self.used, 4 + 8 * self.size)
        flags = self._u16(self.used)
        if flags:
            raise BadDriver(f"invalid initial used.flags {flags:#x}")

    def _pointer(self, gpa: int, size: int) -> memoryview:
        """A window of Guest RAM the Guest handed us: entirely inside RAM, or fatal."""
        if gpa < 0 or gpa + size > self.ram_size or gpa + size < gpa:
            raise BadDriver(f"Invalid address {gpa:#x}")
        return self.view[gpa:gpa + size]

    def _u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.ram, gpa)[0]

    # --- the driver's side of the rings ------------------------------------------------
    def wants_interrupt(self) -> bool:
        return not self._u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT

    # tour:D.100 A request, from the avail ring
    # The Guest's driver writes a request as a chain of descriptors.  Each descriptor is
    # (address, length, flags, next) and names one buffer in Guest-physical memory: readable
    # by the device ("out", a request header, data to write) or, with the WRITE flag,
    # writable ("in", data to read, a status byte).  It puts the chain's first index into
    # the avail ring, then advances avail.idx, then notifies.  `pop` reads that index, takes
    # the next head, and walks the chain, checking every index and every address against
    # the rules at the top of this file; the buffers become memoryviews into Guest RAM.
    # A Guest that lies about any of it is ended as a bad driver.
    def pop(self) -> Chain | None:
        """The next available chain, validated (rules 4 to 7); None if the Guest offered none."""
        avail_idx = self._u16(self.avail + 2)
        if avail_idx == self.last_avail:
            return None
        if (avail_idx - self.last_avail) & 0xFFFF > self.size:
            raise BadDriver(f"Guest moved used index from {self.last_avail} to {avail_idx}")
        head = self._u16(self.avail + 4 + 2 * (self.last_avail % self.size))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.size:
            raise BadDriver(f"Guest says index {head} is available")
        chain = self._chain(head)
        if self.on_request is not None:
            self.on_request(chain)
        return chain

    def _chain(self, head: int) -> Chain:
        chain = Chain(head)
        table, limit, i = self.desc, self.size, head
        addr, length, flags, _ = self._descriptor(table, i)
        if flags & VRING_DESC_F_INDIRECT:
            if not self.indirect:
                raise BadDriver("vq indirect not negotiated")
            if flags & VRING_DESC_F_NEXT:
                raise BadDriver("indirect and next together")
            if length % DESC_SIZE:
                raise BadDriver("Invalid size for indirect table")
            limit = length // DESC_SIZE
            if limit > self.size:
                raise BadDriver("indirect has too many entries")
            self._pointer(addr, length)
            table, i = addr, 0
        while True:
            addr, length, flags, next_ = self._descriptor(table, i)
            if flags & VRING_DESC_F_INDIRECT:
                raise BadDriver("Indirect within indirect")
            buffer = self._pointer(addr, length)
            if flags & VRING_DESC_F_WRITE:
                chain.into.append(buffer)
            elif chain.into:
                raise BadDriver("Descriptor has out after in")
            else:
                chain.out.append(buffer)
            if len(chain.out) + len(chain.into) > limit:
                raise BadDriver("Looped descriptor")
            if not flags & VRING_DESC_F_NEXT:
                return chain
            if next_ >= limit:
                raise BadDriver(f"Desc next is {next_}")
            i = next_

    def _descriptor(self, table: int, i: int) -> tuple[int, int, int, int]:
        addr, length, flags, next_ = struct.unpack_from("<QIHH", self._pointer(table + DESC_SIZE * i,
                                                                                  DESC_SIZE))
        return addr, length, flags, next_

    # --- the device's side ----------------------------------------------------------------
    def push(self, head: int, length: int) -> None:
        """Give a chain back, with the number of bytes written into it."""
        used_idx = self._u16(self.used + 2)
        slot = self.used + 4 + 8 * (used_idx % self.size)
        struct.pack_into("<II", self.ram, slot, head, length)
        struct.pack_into("<H", self.ram, self.used + 2, (used_idx + 1) & 0xFFFF)

