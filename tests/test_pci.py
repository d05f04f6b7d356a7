"""PCI configuration space as a 4.x Guest sees it through ports 0xCF8/0xCFC (spec §7.2)."""

from __future__ import annotations

import struct

import pytest

from lguest.launcher.boot import allocate_guest_ram
from lguest.launcher.pci import HostLink, PciBus
from lguest.launcher.ports import Ports
from lguest.launcher.virtio.console import ConsoleDevice

MMIO = 0x4100000


@pytest.fixture
def ports():
    pci = PciBus()
    out = bytearray()
    fatal: list[str] = []
    console = ConsoleDevice(1, allocate_guest_ram(8 << 20), 8 << 20, out.extend, host=HostLink(fatal.append))
    pci.add(console)
    console.place(MMIO)
    warnings: list[str] = []
    p = Ports(pci, warnings.append)
    p.out, p.fatal, p.warnings = out, fatal, warnings
    return p


def config_address(slot: int, reg: int) -> int:
    return 0x80000000 | slot << 11 | reg


def read(ports, slot: int, reg: int, size: int = 4) -> int:
    ports.port_out(0xCF8, 4, config_address(slot, reg & ~3))
    return ports.port_in(0xCFC + (reg & 3), size)


def write(ports, slot: int, reg: int, value: int, size: int = 4) -> bool:
    ports.port_out(0xCF8, 4, config_address(slot, reg & ~3))
    return ports.port_out(0xCFC + (reg & 3), size, value)


def config_bytes(ports, slot: int) -> bytes:
    return b"".join(struct.pack("<I", read(ports, slot, reg)) for reg in range(0, 152, 4))


def test_host_bridge_is_class_06_with_vendor_0(ports) -> None:
    assert read(ports, 0, 0) == 0
    assert read(ports, 0, 8) == 0x06000000


def test_console_config_space_byte_for_byte(ports) -> None:
    cfg = config_bytes(ports, 1)
    assert struct.unpack_from("<HH", cfg, 0) == (0x1AF4, 0x1043)
    assert struct.unpack_from("<HH", cfg, 4) == (0, 0x10)
    assert cfg[8:12] == bytes([1, 0, 0x00, 0x07])
    assert struct.unpack_from("<I", cfg, 0x10)[0] == MMIO
    assert cfg[0x14:0x28] == bytes(20)
    assert struct.unpack_from("<HH", cfg, 0x2C) == (0, 0x40)
    assert cfg[0x34] == 0x40
    assert (cfg[0x3C], cfg[0x3D]) == (1, 0)
    caps = {
        0x40: (9, 0x50, 16, 1, 0, 0, 56),
        0x50: (9, 0x64, 20, 2, 0, 56, 2),
        0x64: (9, 0x84, 16, 3, 0, 58, 1),
        0x74: (9, 0x00, 16, 4, 0, 60, 12),
        0x84: (9, 0x74, 20, 5, 0, 0, 0),
    }
    for at, expected in caps.items():
        assert struct.unpack_from("<BBBBB3xII", cfg, at) == expected, hex(at)
    assert struct.unpack_from("<I", cfg, 0x60)[0] == 0  # notify_off_multiplier


def test_empty_slots_and_bad_addresses_read_all_ones(ports) -> None:
    assert read(ports, 2, 0) == 0xFFFFFFFF
    ports.port_out(0xCF8, 4, 0x00000800)  # enable bit clear
    assert ports.port_in(0xCFC, 4) == 0xFFFFFFFF
    ports.port_out(0xCF8, 4, 0x80000900)  # function 1
    assert ports.port_in(0xCFC, 2) == 0xFFFF
    assert read(ports, 1, 152) == 0xFFFFFFFF  # past the 152-byte config space


def test_config_address_latch_merges_partial_writes(ports) -> None:
    ports.port_out(0xCF8, 4, 0x80000800)
    ports.port_out(0xCFA, 1, 0x12)
    assert ports.port_in(0xCF8, 4) == 0x80120800
    assert ports.port_in(0xCFA, 2) == 0x8012


def test_sub_dword_reads_use_the_port_offset(ports) -> None:
    assert read(ports, 1, 2, 2) == 0x1043
    assert read(ports, 1, 0x0B, 1) == 0x07


def test_bar0_sizing(ports) -> None:
    assert write(ports, 1, 0x10, 0xFFFFFFFF)
    assert read(ports, 1, 0x10) == 0xFFFFFF80  # a 128-byte window
    assert write(ports, 1, 0x10, MMIO)
    assert read(ports, 1, 0x10) == MMIO


def test_accepted_and_rejected_writes(ports) -> None:
    assert write(ports, 1, 0x04, 0x7, size=2)  # command: accepted, ignored
    assert read(ports, 1, 0x04, 2) == 0
    assert write(ports, 1, 0x0C, 0x12345678)  # only cacheline/latency stick
    assert read(ports, 1, 0x0C) == 0x5678
    assert write(ports, 1, 0x14, 0xDEADBEEF)  # BAR1: stored as written
    assert read(ports, 1, 0x14) == 0xDEADBEEF
    assert not write(ports, 1, 0x00, 0)  # vendor/device: read-only
    assert not write(ports, 1, 0x40, 0)  # other capability fields
    assert not write(ports, 0, 0x10, 0)  # the host bridge takes nothing
    assert not write(ports, 5, 0x10, 0)  # nobody there
    assert ports.warnings[-1] == "Attempt to write to port 3324 (0xffffffff mask)"


def test_emergency_write_through_the_pci_cfg_window(ports) -> None:
    for ch in b"hi\n":
        assert write(ports, 1, 0x84 + 4, 0, size=1)  # bar
        assert write(ports, 1, 0x84 + 12, 4)  # length
        assert write(ports, 1, 0x84 + 8, 60 + 8)  # offset: emerg_wr
        assert write(ports, 1, 0x94, ch)
    assert bytes(ports.out) == b"hi\n"
    assert ports.fatal == []


def test_device_config_reads_through_the_window(ports) -> None:
    write(ports, 1, 0x84 + 12, 4)
    write(ports, 1, 0x84 + 8, 60)
    assert read(ports, 1, 0x94) == 0  # cols, rows


def test_invalid_window_read_is_a_bad_driver(ports) -> None:
    write(ports, 1, 0x84 + 12, 3)
    read(ports, 1, 0x94)
    assert ports.fatal == ["console: bad driver: Invalid cfg_access to bar0, offset 0 len 3"]


def test_invalid_window_write_is_rejected(ports) -> None:
    write(ports, 1, 0x84 + 12, 4)
    write(ports, 1, 0x84 + 8, 2)  # misaligned
    assert not write(ports, 1, 0x94, 1)


def test_write_to_read_only_device_config_is_a_bad_driver(ports) -> None:
    write(ports, 1, 0x84 + 12, 4)
    write(ports, 1, 0x84 + 8, 60)
    write(ports, 1, 0x94, 1)
    assert ports.fatal == ["console: bad driver: Unexpected write to offset 60"]
