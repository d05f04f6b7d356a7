"""The virtio 1.0 transport and split virtqueues (spec §7.3, §8.4, §9.2).

A small driver written here in Python plays the Guest's part, writing rings into
a real Guest RAM mapping and poking BAR0 through the same entry points the
emulator's MMIO callbacks use.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lguest.launcher.boot import allocate_guest_ram
from lguest.launcher.pci import HostLink
from lguest.launcher.virtio.queue import BadDriver, Virtqueue
from lguest.launcher.virtio.rng import RngDevice
from lguest.launcher.virtio.transport import ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK

MEM = 8 << 20
DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
QUEUE_STRIDE = 0x4000
BUFFERS = 0x40000


class Driver:
    """Plays a Guest virtio-pci driver against one device (by default an entropy device)."""

    def __init__(self, make=lambda ram, host: RngDevice(3, ram, MEM, host=host)) -> None:
        self.ram = allocate_guest_ram(MEM)
        self.errors: list[str] = []
        self.irqs: list[int] = []
        self.dev = make(self.ram, HostLink(self.errors.append, self.irqs.append))

    def r(self, off: int, size: int) -> int:
        return self.dev.mmio_read(off, size)

    def w(self, off: int, size: int, value: int) -> None:
        self.dev.mmio_write(off, size, value)

    def negotiate(self) -> None:
        self.w(20, 1, ACKNOWLEDGE)
        self.w(20, 1, ACKNOWLEDGE | DRIVER)
        self.w(0, 4, 1)
        assert self.r(4, 4) == 1  # VERSION_1 is bit 32
        self.w(8, 4, 1)
        self.w(12, 4, 1)
        self.w(20, 1, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        assert self.r(20, 1) == ACKNOWLEDGE | DRIVER | FEATURES_OK

    def setup_queue(self, n: int = 0, size: int = 16) -> None:
        """Queue n's rings live at DESC/AVAIL/USED + n * QUEUE_STRIDE."""
        self.w(22, 2, n)
        self.w(24, 2, size)
        for off, addr in ((32, DESC), (40, AVAIL), (48, USED)):
            self.w(off, 4, addr + n * QUEUE_STRIDE)
            self.w(off + 4, 4, 0)
        self.w(28, 2, 1)

    def start(self) -> None:
        self.negotiate()
        for n in range(self.r(18, 2)):
            self.setup_queue(n)
        self.w(20, 1, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)

    def descriptor(self, i: int, addr: int, length: int, flags: int = 0, next_: int = 0, q: int = 0) -> None:
        struct.pack_into("<QIHH", self.ram, DESC + q * QUEUE_STRIDE + 16 * i, addr, length, flags, next_)

    def offer(self, head: int, q: int = 0) -> None:
        avail = AVAIL + q * QUEUE_STRIDE
        idx = struct.unpack_from("<H", self.ram, avail + 2)[0]
        struct.pack_into("<H", self.ram, avail + 4 + 2 * (idx % 16), head)
        struct.pack_into("<H", self.ram, avail + 2, idx + 1)
        self.w(56, 2, q)

    def used_idx(self, q: int = 0) -> int:
        return struct.unpack_from("<H", self.ram, USED + q * QUEUE_STRIDE + 2)[0]

    def used(self, q: int = 0, n: int = 0) -> tuple[int, int]:
        return struct.unpack_from("<II", self.ram, USED + q * QUEUE_STRIDE + 4 + 8 * n)

    def wait_used(self, count: int, q: int = 0) -> None:
        wait_until(lambda: self.used_idx(q) >= count, self.errors)


def wait_until(condition, what: object = "") -> None:
    """Wait for another thread's doing (a hang guard, not a timing check)."""
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert condition(), what


@pytest.fixture
def driver():
    d = Driver()
    yield d
    d.dev.stop()


def test_entropy_fills_buffers_and_interrupts(driver) -> None:
    driver.start()
    driver.descriptor(0, BUFFERS, 64, flags=2 | 1, next_=1)
    driver.descriptor(1, BUFFERS + 64, 32, flags=2)
    driver.offer(0)  # and notify queue 0
    driver.wait_used(1)
    assert struct.unpack_from("<II", driver.ram, USED + 4) == (0, 96)
    assert driver.ram[BUFFERS:BUFFERS + 96] != bytes(96)
    wait_until(lambda: driver.irqs)  # the thread signals just after it fills the used ring
    assert driver.irqs == [3]
    assert driver.r(58, 1) == 1 and driver.r(58, 1) == 0  # ISR reads and clears
    assert driver.errors == []


def test_no_interrupt_flag_is_respected(driver) -> None:
    driver.start()
    struct.pack_into("<H", driver.ram, AVAIL, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    driver.descriptor(0, BUFFERS, 8, flags=2)
    driver.offer(0)
    driver.wait_used(1)
    assert driver.irqs == []


def test_reset_stops_the_queues(driver) -> None:
    driver.start()
    workers = list(driver.dev.threads)
    assert workers and all(t.is_alive() for t in workers)
    driver.w(20, 1, 0)
    assert driver.r(20, 1) == 0 and driver.dev.threads == []
    assert not any(t.is_alive() for t in workers)  # really stopped, not just forgotten
    driver.w(20, 1, ACKNOWLEDGE)
    driver.w(20, 1, ACKNOWLEDGE | DRIVER)
    driver.w(22, 2, 0)
    assert driver.r(24, 2) == 256  # queue size back to the default
    assert driver.errors == []


def test_forty_resets_leave_no_thread_behind(driver) -> None:
    """Issue 9.8: a reset stops the workers without holding the lock they wait for."""
    workers = []
    for _ in range(40):
        driver.start()
        workers += driver.dev.threads
        driver.w(20, 1, 0)
    assert len(workers) == 40 and not any(t.is_alive() for t in workers)
    assert not [t for t in threading.enumerate() if t.name.startswith("lguest-rng")]
    assert driver.errors == []


def test_refused_feature_select_is_not_kept(driver) -> None:
    """Issue 9.7: after a bad driver nothing more is stored or computed."""
    driver.w(20, 1, ACKNOWLEDGE)
    driver.w(20, 1, ACKNOWLEDGE | DRIVER)
    driver.w(8, 4, 0x7FFFFFFF)
    driver.w(12, 4, 0xFFFFFFFF)  # would shift by 32 * 0x7FFFFFFF if the select had been kept
    assert driver.dev.guest_feature_select == 0 and driver.dev.features_accepted == 0
    assert driver.errors == ["rng: bad driver: Unexpected driver select 2147483647"]


@pytest.mark.parametrize("size", [0, 512, 0x8000])
def test_queue_size_out_of_range(driver, size: int) -> None:
    driver.w(24, 2, size)
    assert driver.errors == [f"rng: bad driver: invalid queue size {size}"]
    assert driver.dev.queues[0].size == 256


# Each protocol violation, after `steps`, and the exact message (§9.2).
VIOLATIONS = {
    "feature read before DRIVER": (lambda d: d.r(4, 4), "feature read before VIRTIO_CONFIG_S_DRIVER"),
    "feature write before DRIVER": (lambda d: d.w(8, 4, 0), "feature write before VIRTIO_CONFIG_S_DRIVER"),
    "feature write after FEATURES_OK": (lambda d: (d.negotiate(), d.w(12, 4, 0)),
                                        "feature write after VIRTIO_CONFIG_S_FEATURES_OK"),
    "driver select": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(8, 4, 2)), "Unexpected driver select 2"),
    "over-accept": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(12, 4, 4)),
                    "over-accepted features 0x4 of 0x100000000"),
    "unset status": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(20, 1, 1)),
                     "unset of device status bit 0x3 -> 0x1"),
    "unknown status bit": (lambda d: d.w(20, 1, 0x40), "unknown device status bit 0x0 -> 0x40"),
    "failed status": (lambda d: d.w(20, 1, 0x80), "unknown device status bit 0x0 -> 0x80"),
    "skipped step": (lambda d: d.w(20, 1, 2), "unexpected status transition 0x0 -> 0x2"),
    "no re-read": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(20, 1, 11), d.w(20, 1, 15)),
                   "did not re-read FEATURES_OK"),
    "no re-read before setup": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(20, 1, 11), d.w(32, 4, DESC)),
                                "didn't re-read FEATURES_OK before setup"),
    "vq before FEATURES_OK": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.w(32, 4, DESC)),
                              "setting up vq before FEATURES_OK"),
    "queue size": (lambda d: d.w(24, 2, 3), "invalid queue size 3"),
    "queue size live": (lambda d: (d.negotiate(), d.setup_queue(), d.w(24, 2, 8)),
                        "changing queue size on live device"),
    "queue live": (lambda d: (d.negotiate(), d.setup_queue(), d.w(32, 4, DESC)),
                   "changing queue on live device"),
    "msix vector": (lambda d: d.w(26, 2, 1), "attempt to set MSIX vector to 1"),
    "msix read": (lambda d: d.r(16, 2), "read of msix_config"),
    "queue enable 0": (lambda d: d.w(28, 2, 0), "setting queue_enable to 0"),
    "enable after DRIVER_OK": (lambda d: (d.start(), d.w(28, 2, 1)), "enabling vq after DRIVER_OK"),
    "notify_off": (lambda d: d.w(30, 2, 0), "attempt to write to queue_notify_off"),
    "bad notification": (lambda d: (d.start(), d.w(56, 2, 5)), "Invalid vq notification on 5"),
    "notify read early": (lambda d: d.r(56, 2), "notify before VIRTIO_CONFIG_S_DRIVER_OK"),
    "isr write": (lambda d: d.w(58, 1, 0), "Unexpected write to isr"),
    "device_feature write": (lambda d: d.w(4, 4, 0), "Unexpected write to offset 4"),
    "width": (lambda d: d.r(0, 2), "non-32-bit read to offset 0"),
    "write width": (lambda d: d.w(20, 2, 1), "non-8-bit write to offset 20"),
    "padding": (lambda d: d.r(59, 1), "read from padding"),
    "config before DRIVER": (lambda d: d.r(60, 4), "config read before VIRTIO_CONFIG_S_DRIVER"),
    "read past end": (lambda d: (d.w(20, 1, 1), d.w(20, 1, 3), d.r(64, 4)), "read past end"),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_driver_protocol_violation(driver, name: str) -> None:
    steps, message = VIOLATIONS[name]
    steps(driver)
    assert driver.errors[:1] == [f"rng: bad driver: {message}"]


QUEUE_VIOLATIONS = {
    "64-bit address": (lambda d: d.w(36, 4, 1), "invalid 64-bit queue address"),
    "alignment": (lambda d: d.w(32, 4, DESC + 8), "invalid alignment in queue addresses"),
    "outside RAM": (lambda d: d.w(48, 4, MEM - 8), f"Invalid address {MEM - 8:#x}"),
    "used flags": (lambda d: struct.pack_into("<H", d.ram, USED, 1), "invalid initial used.flags 0x1"),
}


@pytest.mark.parametrize("name", sorted(QUEUE_VIOLATIONS))
def test_queue_enable_checks(driver, name: str) -> None:
    change, message = QUEUE_VIOLATIONS[name]
    driver.negotiate()
    driver.w(22, 2, 0)
    driver.w(24, 2, 16)
    for off, addr in ((32, DESC), (40, AVAIL), (48, USED)):
        driver.w(off, 4, addr)
    change(driver)
    driver.w(28, 2, 1)
    assert driver.errors == [f"rng vq input: bad driver: {message}"]


# --- descriptor chains ---------------------------------------------------------------------

def ring(size: int = 16) -> tuple[Virtqueue, bytearray]:
    ram = allocate_guest_ram(MEM)
    q = Virtqueue("test", ram, MEM)
    q.size, q.desc, q.avail, q.used, q.enabled = size, DESC, AVAIL, USED, True
    return q, ram


def put_desc(ram, i: int, addr: int, length: int, flags: int = 0, next_: int = 0, table: int = DESC) -> None:
    struct.pack_into("<QIHH", ram, table + 16 * i, addr, length, flags, next_)


def make_available(ram, *heads: int) -> None:
    for n, head in enumerate(heads):
        struct.pack_into("<H", ram, AVAIL + 4 + 2 * n, head)
    struct.pack_into("<H", ram, AVAIL + 2, len(heads))


CHAIN_ERRORS = {
    "out after in": ([(BUFFERS, 4, 2 | 1, 1), (BUFFERS + 8, 4, 0, 0)], "Descriptor has out after in"),
    "loop": ([(BUFFERS, 4, 1, 1), (BUFFERS, 4, 1, 0)], "Looped descriptor"),
    "next out of range": ([(BUFFERS, 4, 1, 99)], "Desc next is 99"),
    "outside RAM": ([(MEM - 2, 4, 0, 0)], f"Invalid address {MEM - 2:#x}"),
    "indirect not negotiated": ([(BUFFERS, 32, 4, 0)], "vq indirect not negotiated"),
}


@pytest.mark.parametrize("name", sorted(CHAIN_ERRORS))
def test_chain_validation(name: str) -> None:
    descs, message = CHAIN_ERRORS[name]
    q, ram = ring()
    for i, d in enumerate(descs):
        put_desc(ram, i, *d)
    make_available(ram, 0)
    with pytest.raises(BadDriver, match=f"^{message}$"):
        q.pop()


def test_head_out_of_range_and_runaway_index() -> None:
    q, ram = ring()
    make_available(ram, 20)
    with pytest.raises(BadDriver, match="^Guest says index 20 is available$"):
        q.pop()
    q, ram = ring()
    struct.pack_into("<H", ram, AVAIL + 2, 100)
    with pytest.raises(BadDriver, match="^Guest moved used index from 0 to 100$"):
        q.pop()


def test_indirect_tables() -> None:
    q, ram = ring()
    q.indirect = True
    table = BUFFERS + 0x1000
    put_desc(ram, 0, BUFFERS, 8, 1, 1, table=table)
    put_desc(ram, 1, BUFFERS + 8, 8, 2, 0, table=table)
    put_desc(ram, 0, table, 32, 4)
    make_available(ram, 0)
    chain = q.pop()
    assert chain is not None and len(chain.out) == 1 and len(chain.into) == 1
    for descs, message in (([(table, 24, 4, 0)], "Invalid size for indirect table"),
                           ([(table, 32, 4 | 1, 1)], "indirect and next together"),
                           ([(table, 16 * 17, 4, 0)], "indirect has too many entries")):
        q, ram = ring()
        q.indirect = True
        put_desc(ram, 0, *descs[0])
        make_available(ram, 0)
        with pytest.raises(BadDriver, match=f"^{message}$"):
            q.pop()
    q, ram = ring()
    q.indirect = True
    put_desc(ram, 0, table, 16, 4)
    put_desc(ram, 0, table, 16, 4, table=table)
    make_available(ram, 0)
    with pytest.raises(BadDriver, match="^Indirect within indirect$"):
        q.pop()


descriptor = st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, MEM), st.integers(0, 2**32 - 1)
                       | st.integers(0, 8192), st.integers(0, 0xFFFF) | st.integers(0, 7), st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(descs=st.lists(descriptor, min_size=1, max_size=16), heads=st.lists(st.integers(0, 40), max_size=4),
       indirect=st.booleans())
def test_fuzzed_rings_never_escape_guest_ram(descs, heads, indirect) -> None:
    """Whatever the Guest writes in its rings, the Launcher only raises BadDriver, and every
    buffer it hands a device lies inside Guest RAM."""
    q, ram = ring()
    q.indirect = indirect
    for i, d in enumerate(descs):
        put_desc(ram, i, *d)
    make_available(ram, *heads)
    base = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    for _ in heads:
        try:
            chain = q.pop()
        except BadDriver:
            return
        assert chain is not None
        for buffer in chain.out + chain.into:
            if len(buffer):
                start = ctypes.addressof(ctypes.c_char.from_buffer(buffer)) - base
                assert start >= 0 and start + len(buffer) <= MEM
