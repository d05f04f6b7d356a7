"""gdb's remote serial protocol, the framing only: `$data#cs` packets, acks, Ctrl-C.

The stream from gdb is untrusted bytes.  `PacketReader` turns it into events and
never raises: a bad checksum is answered `-` (gdb sends the packet again), a
packet longer than we advertised is dropped with a `-` as well, and bytes outside
any packet are ignored, as the protocol says a stub should.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PACKET_SIZE = 0x4000  # what qSupported advertises: the most data we accept in one packet
INTERRUPT = 0x03  # Ctrl-C from gdb, sent bare while the Guest runs


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """A packet ready to send: `$`, data with $ # } * escaped, `#`, checksum."""
    escaped = bytearray()
    for byte in data:
        if byte in b"$#}*":
            escaped += bytes([0x7D, byte ^ 0x20])
        else:
            escaped.append(byte)
    return b"$" + bytes(escaped) + b"#%02x" % checksum(bytes(escaped))


def unescape(data: bytes) -> bytes:
    """Undo the `}` escapes of a binary packet body (X, vFile...)."""
    out = bytearray()
    it = iter(data)
    for byte in it:
        out.append(next(it, 0) ^ 0x20 if byte == 0x7D else byte)
    return bytes(out)


@dataclass(frozen=True)
class Packet:
    data: bytes


@dataclass(frozen=True)
class Ack:
    good: bool  # `+`, or `-` (send the last packet again)


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Rejected:
    """A packet with a bad checksum or over the size limit: answer `-`."""

    why: str


Event = Packet | Ack | Interrupt | Rejected


class PacketReader:
    """Bytes in, events out; keeps a partial packet between reads."""

    def __init__(self, limit: int = PACKET_SIZE) -> None:
        self.limit = limit
        self._body: bytearray | None = None  # inside `$...`
        self._sum: bytearray | None = None  # the checksum digits after `#`
        self._oversized = False

    def feed(self, chunk: bytes) -> Iterator[Event]:
        for byte in chunk:
            event = self._byte(byte)
            if event is not None:
                yield event

    def _byte(self, byte: int) -> Event | None:
        if self._sum is not None:
            self._sum.append(byte)
            return self._finish() if len(self._sum) == 2 else None
        if self._body is not None:
            if byte == ord("#"):
                self._sum = bytearray()
            elif len(self._body) >= self.limit:
                self._oversized = True  # keep swallowing until `#`, then reject
            else:
                self._body.append(byte)
            return None
        if byte == ord("$"):
            self._body, self._oversized = bytearray(), False
            return None
        if byte in b"+-":
            return Ack(byte == ord("+"))
        if byte == INTERRUPT:
            return Interrupt()
        return None  # noise between packets

    def _finish(self) -> Event:
        assert self._body is not None and self._sum is not None
        body, digits = bytes(self._body), bytes(self._sum)
        self._body = self._sum = None
        if self._oversized:
            return Rejected("packet too long")
        try:
            good = int(digits, 16) == checksum(body)
        except ValueError:
            good = False
        return Packet(body) if good else Rejected("bad checksum")
