"""The Launcher's devices moving real bytes: block to a file, console to pipes,
network between two devices over UDP on loopback (spec §8.4)."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from test_virtio import BUFFERS, MEM, Driver, wait_until

from lguest.launcher.control import STOPPED_BY_USER, Keyboard, StopRequest
from lguest.launcher.virtio.block import BlockDevice
from lguest.launcher.virtio.console import ConsoleDevice
from lguest.launcher.virtio.net import NetDevice, UdpLink

SECTOR = 512
OUT_HDR = BUFFERS  # request header
DATA = BUFFERS + 0x1000
STATUS = BUFFERS + 0x3000
W, N = 2, 1  # descriptor flags: device-writable, next


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(16 * SECTOR))
    return path


def block_driver(path, read_only: bool = False) -> Driver:
    fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    d = Driver(lambda ram, host: BlockDevice(2, ram, MEM, fd, read_only, host=host))
    d.start()
    return d


def request(d: Driver, n: int, kind: int, sector: int, data_len: int, data_flags: int) -> int:
    """Post one block request as descriptors 3n..3n+2; returns the status byte address."""
    struct.pack_into("<IIQ", d.ram, OUT_HDR + 16 * n, kind, 0, sector)
    d.descriptor(3 * n, OUT_HDR + 16 * n, 16, N, 3 * n + 1)
    d.descriptor(3 * n + 1, DATA + 0x800 * n, data_len, data_flags | N, 3 * n + 2)
    d.descriptor(3 * n + 2, STATUS + n, 1, W)
    d.offer(3 * n)
    d.wait_used(n + 1)
    return STATUS + n


def test_block_write_flush_read(disk) -> None:
    d = block_driver(disk)
    assert struct.unpack_from("<QII", d.dev.device_config) == (16, 0, 254)
    d.ram[DATA:DATA + SECTOR] = b"lguest!!" * 64
    status = request(d, 0, 1, 3, SECTOR, 0)  # write sector 3
    assert d.ram[status] == 0
    assert request(d, 1, 4, 0, 0, 0) and d.ram[STATUS + 1] == 0  # flush
    assert disk.read_bytes()[3 * SECTOR:4 * SECTOR] == b"lguest!!" * 64
    status = request(d, 2, 0, 3, SECTOR, W)  # read it back
    assert d.ram[status] == 0
    assert d.ram[DATA + 0x1000:DATA + 0x1000 + SECTOR] == b"lguest!!" * 64
    assert d.used(0, 2)[1] == SECTOR + 1  # bytes read plus the status byte
    assert d.errors == []
    d.dev.stop()


@pytest.mark.parametrize("sector", [16, 1 << 54])
def test_block_write_past_end_is_fatal(disk, sector: int) -> None:
    """The original's rule for writes; a huge sector is no Python OverflowError (issue 9.6)."""
    d = block_driver(disk)
    struct.pack_into("<IIQ", d.ram, OUT_HDR, 1, 0, sector)
    d.descriptor(0, OUT_HDR, 16, N, 1)
    d.descriptor(1, DATA, SECTOR, N, 2)
    d.descriptor(2, STATUS, 1, W)
    d.offer(0)
    d.dev.threads[0].join(5)
    assert d.errors == [f"block vq request: bad driver: Write past end {sector}+512"]
    assert disk.stat().st_size == 16 * SECTOR


def test_read_only_block_refuses_writes(disk) -> None:
    d = block_driver(disk, read_only=True)
    assert d.dev.features >> 5 & 1  # VIRTIO_BLK_F_RO offered
    status = request(d, 0, 1, 0, SECTOR, 0)
    assert d.ram[status] == 1  # IOERR
    assert disk.read_bytes() == bytes(16 * SECTOR)
    d.dev.stop()


def test_block_read_past_the_end_is_an_io_error(disk) -> None:
    """Issue 9.6: a Guest-chosen sector is checked against the capacity (2**54 included)."""
    d = block_driver(disk)
    assert d.ram[request(d, 0, 0, 16, SECTOR, W)] == 1  # IOERR
    assert d.ram[request(d, 1, 0, 1 << 54, SECTOR, W)] == 1
    assert d.ram[request(d, 2, 0, 15, SECTOR, W)] == 0  # the last sector is fine
    assert d.errors == [] and d.dev.threads[0].is_alive()
    d.dev.stop()


def test_host_io_errors_reach_the_guest_as_ioerr(tmp_path) -> None:
    """A flush the host cannot do (/dev/null has no data to sync) fails the request only."""
    d = Driver(lambda ram, host: BlockDevice(2, ram, MEM, os.open("/dev/null", os.O_RDWR), False, host=host))
    d.start()
    assert d.ram[request(d, 0, 4, 0, 0, 0)] == 1  # FLUSH: EINVAL from fdatasync
    assert d.errors == [] and d.dev.threads[0].is_alive()
    d.dev.stop()


def test_block_request_without_status_room_is_fatal(disk) -> None:
    d = block_driver(disk)
    d.descriptor(0, OUT_HDR, 16, 0)
    d.offer(0)
    d.dev.threads[0].join(5)
    assert d.errors == ["block vq request: bad driver: Bad virtblk cmd with no room for status"]


def test_console_output_and_input() -> None:
    out = bytearray()
    read_end, write_end = os.pipe()
    d = Driver(lambda ram, host: ConsoleDevice(1, ram, MEM, out.extend, Keyboard(read_end, StopRequest()),
                                 host=host))
    d.start()
    d.ram[DATA:DATA + 6] = b"hello\n"
    d.descriptor(0, DATA, 6, 0, q=1)
    d.offer(0, q=1)
    d.wait_used(1, q=1)
    assert bytes(out) == b"hello\n"
    d.descriptor(0, BUFFERS, 64, W, q=0)
    d.offer(0, q=0)
    os.write(write_end, b"ls -l\n")
    d.wait_used(1, q=0)
    assert d.used(0, 0) == (0, 6)
    assert d.ram[BUFFERS:BUFFERS + 6] == b"ls -l\n"
    assert d.irqs and d.errors == []
    d.dev.stop()
    os.close(write_end)
    os.close(read_end)


def test_console_escape_keys() -> None:
    """Lone Ctrl-Cs reach the Guest; three together ask for a stop (130).

    (Three typed one by one count when they fall within a second; the test sends
    them in one burst so that a loaded machine cannot stretch that second.)"""
    read_end, write_end = os.pipe()
    stop = StopRequest()
    d = Driver(lambda ram, host: ConsoleDevice(1, ram, MEM, lambda data: None, Keyboard(read_end, stop),
                                 host=host))
    d.start()
    for i in range(3):
        d.descriptor(i, BUFFERS + 64 * i, 64, W, q=0)
        d.offer(i, q=0)
    os.write(write_end, b"\x03")
    d.wait_used(1, q=0)
    assert stop.status is None
    os.write(write_end, b"\x03\x03\x03")
    wait_until(lambda: stop.status is not None)
    assert (stop.status, stop.message) == (130, STOPPED_BY_USER)
    assert d.used_idx(0) == 1  # the burst never reached the Guest
    d.dev.stop()
    os.close(write_end)


def test_keys_typed_before_the_driver_wait_for_it() -> None:
    """The keyboard is read from the start; the console takes what was typed later."""
    read_end, write_end = os.pipe()
    keyboard = Keyboard(read_end, StopRequest())
    os.write(write_end, b"early keys\n")
    os.close(write_end)
    wait_until(lambda: keyboard.ended)
    d = Driver(lambda ram, host: ConsoleDevice(1, ram, MEM, lambda data: None, keyboard, host=host))
    d.start()
    d.descriptor(0, BUFFERS, 64, W, q=0)
    d.descriptor(1, BUFFERS + 64, 64, W, q=0)
    d.offer(0, q=0)
    d.offer(1, q=0)
    d.wait_used(2, q=0)
    assert d.ram[BUFFERS:BUFFERS + 11] == b"early keys\n"
    assert d.used(0, 1) == (1, 1) and d.ram[BUFFERS + 64] == 4  # then one Ctrl-D: input ended
    d.dev.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_network_devices_exchange_frames() -> None:
    pa, pb = free_port(), free_port()
    a = Driver(lambda ram, host: NetDevice(3, ram, MEM, UdpLink(pa, ("127.0.0.1", pb)),
                                           bytes([2, 0, 0, 0, 0, 1]), host=host))
    b = Driver(lambda ram, host: NetDevice(3, ram, MEM, UdpLink(pb, ("127.0.0.1", pa)),
                                           bytes([2, 0, 0, 0, 0, 2]), host=host))
    a.start()
    b.start()
    b.descriptor(0, BUFFERS, 2048, W, q=0)  # rx buffer on B
    b.offer(0, q=0)
    frame = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xB5]) + b"hi from A"
    a.ram[DATA:DATA + 12 + len(frame)] = bytes(12) + frame
    a.descriptor(0, DATA, 12 + len(frame), 0, q=1)  # tx on A
    a.offer(0, q=1)
    b.wait_used(1, q=0)
    length = b.used(0, 0)[1]
    assert length == 12 + len(frame)
    assert b.ram[BUFFERS + 12:BUFFERS + length] == frame
    assert a.errors == b.errors == []
    for d in (a, b):
        d.dev.stop()
        d.dev.link.close()


RX_BUFFERS = 8
RX_AREA = BUFFERS + 0x8000  # clear of DATA, where the frame to send is


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    return (b"\xff" * 6 + sender_mac + b"\x08\x06" + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1)
            + sender_mac + socket.inet_aton(sender_ip) + bytes(6) + socket.inet_aton(target_ip))


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="a tap device needs root and /dev/net/tun")
def test_tap_network_reaches_the_host_kernel() -> None:
    """--tunnet: the host kernel answers the Guest's ARP request through the tap."""
    from lguest.launcher.virtio.net import TapLink

    mac = bytes([2, 0, 0, 0, 0x77, 2])
    tap = TapLink("10.77.0.1")
    d = Driver(lambda ram, host: NetDevice(3, ram, MEM, tap, mac, host=host))
    d.start()
    assert d.dev.features >> 28 & 1  # indirect descriptors, with the tap's offloads
    # The host kernel may greet a new interface first (IPv6 multicast listener reports,
    # router solicitations): enough receive buffers for those and the ARP reply.
    for i in range(RX_BUFFERS):
        d.descriptor(i, RX_AREA + 2048 * i, 2048, W, q=0)
        d.offer(i, q=0)
    frame = arp_request(mac, "10.77.0.2", "10.77.0.1")
    d.ram[DATA:DATA + 12 + len(frame)] = bytes(12) + frame
    d.descriptor(0, DATA, 12 + len(frame), 0, q=1)
    d.offer(0, q=1)

    def received() -> list[bytes]:
        frames = []
        for n in range(min(d.used_idx(0), RX_BUFFERS)):
            head, length = d.used(0, n)
            frames.append(bytes(d.ram[RX_AREA + 2048 * head + 12:RX_AREA + 2048 * head + length]))
        return frames

    def arp_replies() -> list[bytes]:
        return [f for f in received() if f[12:14] == b"\x08\x06" and struct.unpack(">H", f[20:22])[0] == 2]

    wait_until(arp_replies, received)
    reply = arp_replies()[0]
    assert reply[0:6] == mac
    assert reply[28:32] == socket.inet_aton("10.77.0.1")
    d.dev.stop()
    tap.close()


def test_any_exception_in_a_service_thread_ends_the_guest() -> None:
    """Issue 9.6: a thread that dies must take the Guest with it, saying why (here the
    host socket vanished under the receive thread), never leave it waiting."""
    port = free_port()
    d = Driver(lambda ram, host: NetDevice(3, ram, MEM, UdpLink(port, ("127.0.0.1", port)), bytes(6),
                                 host=host))
    d.dev.link.close()
    d.start()
    d.descriptor(0, BUFFERS, 2048, W, q=0)
    d.offer(0, q=0)
    d.dev.threads[0].join(5)
    assert d.errors == ["net: ValueError: file descriptor cannot be a negative integer (-1)"]
    d.dev.stop()
