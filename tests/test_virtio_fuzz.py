"""Property tests over the virtio transport and virtqueues: whatever a driver does.

Hypothesis plays a hostile Guest driver against real devices on a real Guest RAM
mapping: random BAR0 access sequences, and random block requests on a device
that was set up properly.  The only outcomes allowed are "served" and "the
Launcher stops the Guest with `<device>: bad driver: <reason>`" (or its
`<device> vq <queue>: ...` form); never another exception, in the vCPU's thread
or a device's, and never a service thread that outlives the device's stop().
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lguest.launcher.boot import allocate_guest_ram
from lguest.launcher.pci import HostLink
from lguest.launcher.virtio.block import BlockDevice
from lguest.launcher.virtio.console import ConsoleDevice
from lguest.launcher.virtio.rng import RngDevice
from lguest.launcher.virtio.transport import ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, Common

MEM = 4 << 20
DESC, AVAIL, USED, BUFFERS = 0x10000, 0x11000, 0x12000, 0x20000
QUEUE_SIZE = 16
DISK_SECTORS = 64
BAD_DRIVER = re.compile(r"^(console|rng|block)( vq \w+)?: bad driver: .+")
SERVE_TIMEOUT = 20  # seconds: a hang guard


class Harness:
    """One device on fresh Guest RAM, its fatal errors and its threads' exceptions recorded."""

    def __init__(self, kind: str, disk: Path) -> None:
        self.ram = allocate_guest_ram(MEM)
        self.errors: list[str] = []
        self.crashes: list[str] = []
        host = HostLink(self.errors.append, lambda irq: None)
        if kind == "rng":
            self.dev = RngDevice(3, self.ram, MEM, host=host)
        elif kind == "console":
            self.dev = ConsoleDevice(1, self.ram, MEM, lambda data: None, None, host=host)
        else:
            disk.write_bytes(bytes(DISK_SECTORS * 512))
            self.fd = disk.open("r+b")
            self.dev = BlockDevice(2, self.ram, MEM, os.dup(self.fd.fileno()), read_only=False, host=host)

    def access(self, write: bool, offset: int, size: int, value: int) -> None:
        if write:
            self.dev.mmio_write(offset, size, value & (1 << 8 * size) - 1)
        else:
            self.dev.mmio_read(offset, size)

    def close(self) -> None:
        threads = list(self.dev.threads)
        self.dev.stop()
        assert not [t for t in threads if t.is_alive()], "a service thread outlived stop()"
        if hasattr(self, "fd"):
            self.fd.close()


@pytest.fixture
def crashes():
    """Exceptions that escape any thread while the test runs."""
    seen: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(f"{args.exc_type.__name__}: {args.exc_value}")
    yield seen
    threading.excepthook = previous


def assert_only_bad_driver(errors: list[str], crashes: list[str]) -> None:
    assert crashes == []
    for error in errors:
        assert BAD_DRIVER.match(error), error


# --- random BAR0 sequences -----------------------------------------------------------------

REGISTERS = sorted(int(r) for r in Common)  # the registers a driver knows, at their own offsets
STATUS_VALUES = [0, ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FEATURES_OK,
                 ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK]

access = st.tuples(
    st.booleans(),
    st.one_of(st.sampled_from(REGISTERS), st.integers(0, 80), st.integers(0, 4095)),
    st.sampled_from([1, 2, 4]),
    st.one_of(st.sampled_from(STATUS_VALUES), st.sampled_from([DESC, AVAIL, USED, QUEUE_SIZE]),
              st.integers(0, 0xFFFFFFFF)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["rng", "console", "block"]), accesses=st.lists(access, max_size=40))
def test_random_register_sequences_are_served_or_refused(kind, accesses, tmp_path, crashes) -> None:
    harness = Harness(kind, tmp_path / "disk.img")
    try:
        for write, offset, size, value in accesses:
            harness.access(write, offset, size, value)
            if harness.errors:
                break  # the Launcher would stop the Guest here
    finally:
        harness.close()
    assert_only_bad_driver(harness.errors, crashes)


# --- random block requests on a live device -------------------------------------------------

def start_block(h: Harness) -> None:
    """The handshake and queue set-up of a correct driver (VERSION_1 only)."""
    h.access(True, 20, 1, ACKNOWLEDGE)
    h.access(True, 20, 1, ACKNOWLEDGE | DRIVER)
    h.access(True, 8, 4, 1)
    h.access(True, 12, 4, 1)
    h.access(True, 20, 1, ACKNOWLEDGE | DRIVER | FEATURES_OK)
    h.access(False, 20, 1, 0)
    h.access(True, 22, 2, 0)
    h.access(True, 24, 2, QUEUE_SIZE)
    for off, addr in ((32, DESC), (40, AVAIL), (48, USED)):
        h.access(True, off, 4, addr)
        h.access(True, off + 4, 4, 0)
    h.access(True, 28, 2, 1)
    h.access(True, 20, 1, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    assert h.errors == []


segment = st.tuples(st.integers(0, 600), st.booleans())  # length, device-writable
header = st.tuples(st.one_of(st.sampled_from([0, 1, 4, 8]), st.integers(0, 0xFFFFFFFF)),
                   st.integers(0, 0xFFFFFFFF),
                   st.one_of(st.integers(0, DISK_SECTORS + 2), st.integers(0, 2**64 - 1)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=header, segments=st.lists(segment, min_size=1, max_size=5))
def test_random_block_requests_are_served_or_refused(request, segments, tmp_path, crashes) -> None:
    h = Harness("block", tmp_path / "disk.img")
    try:
        start_block(h)
        struct.pack_into("<IIQ", h.ram, BUFFERS, *request)
        addr = BUFFERS
        for i, (length, writable) in enumerate(segments):
            flags = (1 if i + 1 < len(segments) else 0) | (2 if writable else 0)
            struct.pack_into("<QIHH", h.ram, DESC + 16 * i, addr, length, flags, i + 1)
            addr += max(length, 16)
        struct.pack_into("<HH", h.ram, AVAIL + 4, 0, 0)
        struct.pack_into("<H", h.ram, AVAIL + 2, 1)
        h.access(True, 56, 2, 0)
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not h.errors and struct.unpack_from("<H", h.ram, USED + 2)[0] == 0:
            assert time.monotonic() < deadline, "the request was neither served nor refused"
            time.sleep(0.001)
    finally:
        h.close()
    assert_only_bad_driver(h.errors, crashes)
    if not h.errors:
        head, written = struct.unpack_from("<II", h.ram, USED + 4)
        assert head == 0 and written >= 1
