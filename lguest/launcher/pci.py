"""The Launcher's PCI bus: type-1 configuration space on bus 0 (spec §7.2).

A 4.x Guest finds its devices the way a PC does: it writes a configuration
address to port 0xCF8 and reads or writes the data at 0xCFC..0xCFF.  Slot 0 is a
dummy host bridge (it exists only so Linux's type-1 probe succeeds); slots 1..31
are virtio devices, the console always first.  Each virtio device's config space
carries the virtio 1.0 capabilities, including the PCI_CFG window through which
the Guest's early console reaches the console's `emerg_wr` before any driver runs.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

from lguest import abi
from lguest.abi import PciCfg, VirtioCap, VirtioMmio
from lguest.host.ports import Window

CONFIG_ENABLE = 1 << 31
# The PCI_CFG window's fields, as (config offset, size) of the only writes to them we take.
_WINDOW_FIELDS = {(PciCfg.CAP_PCI_CFG + VirtioCap.BAR, 1): Window.BAR,
                  (PciCfg.CAP_PCI_CFG + VirtioCap.OFFSET, 4): Window.OFFSET,
                  (PciCfg.CAP_PCI_CFG + VirtioCap.LENGTH, 4): Window.LENGTH}


class BadDriver(Exception):
    """The Guest's driver broke the virtio protocol: fatal, `<dev>: bad driver: <msg>`.

    Raised by the queue code (a device's service thread turns it into the Guest's
    death), and by a device nobody has given a `fatal` to (the unit tests' devices).
    """


class DriverRefused(Exception):
    """Raised by `bad_driver` once the Guest is killed, so the access goes no further
    (the original Launcher's errx): nothing the Guest asked for is stored or done."""


# tour:D.20 The PCI bus
# The Guest writes a bus/slot/register number to the address port, then reads or writes
# the data port; `_target` routes it to one device's configuration space.  Slot 0 is a
# dummy host bridge that exists so Linux's probe believes in the bus, the console is
# slot 1 and the other devices follow in command-line order.  A slot nobody is in reads
# as all ones, as on real hardware.
class PciBus:
    """Bus 0: the config address latch and the functions in its 32 slots."""

    def __init__(self) -> None:
        self.slots: list[PciFunction | None] = [None] * abi.MAX_PCI_DEVICES
        self.slots[0] = HostBridge()
        self.address = 0

    def add(self, device: PciFunction) -> int:
        """Put a device in the next free slot; its slot number."""
        for slot, present in enumerate(self.slots):
            if present is None:
                self.slots[slot] = device
                return slot
        raise ValueError(f"Can only handle {abi.MAX_PCI_DEVICES - 1} PCI devices")

    def _target(self, addr: int) -> tuple[PciFunction, int] | None:
        """The function and register a config address selects, if it routes anywhere."""
        reg = addr & 0xFC
        bus, slot, function = (addr >> 16) & 0xFF, (addr >> 11) & 0x1F, (addr >> 8) & 7
        if not addr & CONFIG_ENABLE or bus or function or reg >= abi.PCI_CONFIG_SIZE:
            return None
        device = self.slots[slot]
        return (device, reg) if device is not None else None

    def address_write(self, byte: int, size: int, value: int) -> None:
        mask = ((1 << 8 * size) - 1) << 8 * byte
        self.address = (self.address & ~mask) | ((value << 8 * byte) & mask)

    def address_read(self, byte: int, size: int) -> int:
        return (self.address >> 8 * byte) & ((1 << 8 * size) - 1)

    def data_read(self, byte: int, size: int) -> int:
        target = self._target(self.address)
        if target is None:
            return (1 << 8 * size) - 1
        device, reg = target
        if reg + byte + size > abi.PCI_CONFIG_SIZE:
            return (1 << 8 * size) - 1
        return device.config_read(reg + byte, size)

    def data_write(self, byte: int, size: int, value: int) -> bool:
        target = self._target(self.address)
        if target is None:
            return False
        device, reg = target
        return device.config_write(reg + byte, size, value)

    def quiet_data_writes(self) -> dict[int, dict[tuple[int, int], tuple[int, Window]]]:
        """Per config address (one naming a dword of a function on the bus), the data-port
        writes, as (byte, size), that the function takes quietly: accepted whatever the
        value and its state, with no effect beyond its config space (PciFunction.quietly_accepts),
        and the writes through its PCI_CFG window; each with the slot and what it does to
        that window (PciFunction.window_effect)."""
        quiet = {}
        for slot in range(abi.MAX_PCI_DEVICES):
            for reg in range(0, abi.PCI_CONFIG_SIZE, 4):
                addr = CONFIG_ENABLE | slot << 11 | reg
                target = self._target(addr)
                if target is None:
                    continue
                device, at = target
                writes = {(byte, size): (slot, device.window_effect(at + byte, size))
                          for byte in range(4) for size in (1, 2, 4)
                          if device.quietly_accepts(at + byte, size)
                          or device.window_effect(at + byte, size) == Window.DATA}
                if writes:
                    quiet[addr] = writes
        return quiet

    def quiet_windows(self) -> frozenset[tuple[int, int, int, int]]:
        """(slot, bar, offset, length): the PCI_CFG windows through which a data write is
        accepted and does nothing beyond its output (PciFunction.quiet_windows)."""
        return frozenset((slot, *window) for slot, device in enumerate(self.slots) if device is not None
                         for window in device.quiet_windows())


class PciFunction:
    """One function's 152-byte configuration space, with the writes PCI allows."""

    name = "pci"

    def __init__(self) -> None:
        self.config = bytearray(abi.PCI_CONFIG_SIZE)

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> bool:
        """Store a Guest write; False rejects it (the Guest gets a #GP)."""
        taken = self._config_writer(offset, size)
        return taken is not None and taken[0](value)

    def quietly_accepts(self, offset: int, size: int) -> bool:
        """Is a write here accepted whatever its value and our state, with no effect but on
        config space?  Nothing sees such a write before the next config access, so the
        Host may hand it to us a little later."""
        taken = self._config_writer(offset, size)
        return taken is not None and taken[1]

    def window_effect(self, offset: int, size: int) -> Window:
        """What a config write of `size` bytes at `offset` does to our PCI_CFG window."""
        return Window.UNTOUCHED

    def quiet_windows(self) -> frozenset[tuple[int, int, int]]:
        """(bar, offset, length): the windows through which a data write is accepted
        whatever the value and our state, with no effect but its output."""
        return frozenset()

    def _config_writer(self, offset: int, size: int) -> tuple[Callable[[int], bool], bool] | None:
        """How a write of `size` bytes at `offset` is taken (a function of the value,
        False to refuse it) and whether quietly; None: refused whatever the value."""
        return None


class HostBridge(PciFunction):
    """Slot 0: all zeroes but the class code (so vendor 0 makes Linux skip it)."""

    name = "host-bridge"

    def __init__(self) -> None:
        super().__init__()
        self.config[PciCfg.CLASS] = abi.PCI_CLASS_BRIDGE_HOST



def _no_fatal(reason: str) -> None:
    raise BadDriver(reason)


@dataclass(frozen=True)
class HostLink:
    """What a device may ask of the Host, handed to it when it is built: end the Guest
    with a reason (`fatal`, lguest's kill_guest) and raise the device's irq (`interrupt`).

    The defaults serve a device built alone (the unit tests'): a fatal error raises
    BadDriver in the caller, and interrupts go nowhere.
    """

    fatal: Callable[[str], None] = _no_fatal
    interrupt: Callable[[int], object] = lambda irq: None


class VirtioPciDevice(PciFunction):
    """A virtio 1.0 device's PCI face: config space, capabilities, BAR0 window.

    What lies behind BAR0 (common configuration, notify, ISR, device config) is
    served by `mmio_read`/`mmio_write`; the device-specific part is `device_config`.
    """

    def __init__(self, name: str, virtio_id: int, class_code: int, subclass: int, irq: int,
                 device_config: bytes, host: HostLink) -> None:
        super().__init__()
        self.name = name
        self.virtio_id = virtio_id
        self.irq = irq
        self.device_config = bytearray(device_config)
        self.mmio_size = _power_of_two_at_least(VirtioMmio.DEVICE + len(device_config))
        self.mmio_addr = 0
        self.fatal = host.fatal
        self.refused = False  # a bad driver was seen: every later access is ignored
        self._build_config(class_code, subclass)

    # tour:D.30 What a virtio device looks like on the bus
    # Vendor 0x1AF4 and device 0x1040 + the virtio id make Linux's virtio-pci driver claim
    # the device.  BAR0 is the address of its page of MMIO registers, and a chain of vendor
    # capabilities says where in that page each part lives: the common configuration
    # (features, status, queues), the notify register, the interrupt status (ISR), the
    # device's own configuration (a disk's size...), and a PCI_CFG window into BAR0 itself.
    def _build_config(self, class_code: int, subclass: int) -> None:
        c = self.config
        struct.pack_into("<HH", c, PciCfg.VENDOR_ID, abi.PCI_VENDOR_REDHAT_QUMRANET,
                         abi.VIRTIO_PCI_DEVICE_BASE + self.virtio_id)
        struct.pack_into("<H", c, PciCfg.STATUS, abi.PCI_STATUS_CAP_LIST)
        c[PciCfg.REVISION] = 1
        c[PciCfg.SUBCLASS] = subclass
        c[PciCfg.CLASS] = class_code
        struct.pack_into("<H", c, PciCfg.SUBSYS_ID, abi.PCI_SUBSYS_ID_VIRTIO)
        c[PciCfg.CAP_PTR] = PciCfg.CAP_COMMON
        c[PciCfg.INTERRUPT_LINE] = self.irq
        has_device_cfg = bool(self.device_config)
        self._cap(PciCfg.CAP_COMMON, PciCfg.CAP_NOTIFY, VirtioCap.COMMON, VirtioCap.SIZE,
                  VirtioMmio.COMMON, VirtioMmio.COMMON_SIZE)
        self._cap(PciCfg.CAP_NOTIFY, PciCfg.CAP_ISR, VirtioCap.NOTIFY, VirtioCap.NOTIFY_SIZE,
                  VirtioMmio.NOTIFY, VirtioMmio.NOTIFY_SIZE)  # notify_off_multiplier stays 0
        self._cap(PciCfg.CAP_ISR, PciCfg.CAP_PCI_CFG, VirtioCap.ISR, VirtioCap.SIZE,
                  VirtioMmio.ISR, VirtioMmio.ISR_SIZE)
        if has_device_cfg:
            self._cap(PciCfg.CAP_DEVICE, 0, VirtioCap.DEVICE, VirtioCap.SIZE, VirtioMmio.DEVICE,
                      len(self.device_config))
        self._cap(PciCfg.CAP_PCI_CFG, PciCfg.CAP_DEVICE if has_device_cfg else 0, VirtioCap.PCI,
                  VirtioCap.PCI_CFG_SIZE, 0, 0)

    def _cap(self, at: int, next_: int, cfg_type: int, length: int, offset: int, size: int) -> None:
        struct.pack_into("<BBBBB3xII", self.config, at, VirtioCap.VENDOR_ID, next_, length, cfg_type,
                         0, offset, size)

    def bad_driver(self, msg: str) -> NoReturn:
        """The Guest broke the protocol: the Launcher ends it (`<dev>: bad driver: <msg>`)."""
        self.refuse(f"{self.name}: bad driver: {msg}")

    def refuse(self, reason: str) -> NoReturn:
        """End the Guest for `reason` and abandon the access that caused it."""
        self.refused = True
        self.fatal(reason)
        raise DriverRefused

    def place(self, mmio_addr: int) -> None:
        """Give the device its BAR0 window at `mmio_addr` (a guest-physical address)."""
        self.mmio_addr = mmio_addr
        struct.pack_into("<I", self.config, PciCfg.BAR0, mmio_addr)

    # --- configuration writes (§7.2: only these are accepted) -----------------------------
    def _config_writer(self, offset: int, size: int) -> tuple[Callable[[int], bool], bool] | None:
        if offset == PciCfg.BAR0 and size == 4:
            return self._size_bar0, True
        if (_within(offset, size, PciCfg.BAR0 + 4, PciCfg.BAR5_END)
                or _within(offset, size, PciCfg.EXPANSION_ROM, PciCfg.EXPANSION_ROM + 4)
                or _within(offset, size, PciCfg.CACHELINE_LATENCY, PciCfg.CACHELINE_LATENCY + 2)
                or (offset, size) in _WINDOW_FIELDS):
            return partial(self._store, offset, size), True
        if offset == PciCfg.CACHELINE_LATENCY and size == 4:
            return partial(self._store, offset, 2), True
        if offset == PciCfg.COMMAND and size == 2:
            return lambda value: True, True  # accepted and ignored
        if offset == PciCfg.PCI_CFG_DATA:
            # The window may be refused, and what it writes reaches BAR0: never quiet.
            return partial(self._window_write, size), False
        return None

    def _size_bar0(self, value: int) -> bool:
        """Sizing: the bits below the window size read back as zero."""
        struct.pack_into("<I", self.config, PciCfg.BAR0, value & ~(self.mmio_size - 1) & 0xFFFFFFFF)
        return True

    def config_read(self, offset: int, size: int) -> int:
        if _within(offset, size, PciCfg.PCI_CFG_DATA, PciCfg.PCI_CFG_DATA + 4):
            try:
                return self._window_read()
            except DriverRefused:
                return 0xFFFFFFFF
        return super().config_read(offset, size)

    def _store(self, offset: int, size: int, value: int) -> bool:
        """Stored as written: accepted."""
        self.config[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return True

    # --- the PCI_CFG window: BAR0 accesses through config space ---------------------------
    # tour:D.40 The early console
    # Before any driver runs, a Guest kernel already wants to print.  lguest's early console
    # uses the PCI_CFG capability: through port I/O alone, the Guest points the window at the
    # console's `emerg_wr` register (in its device configuration) and writes one character
    # to the window's data.  That write arrives here, becomes a 32-bit write to BAR0 (see
    # ConsoleDevice.device_config_write), and the byte goes to our stdout.  Slow, about eight
    # trapping port accesses per character, but it works before interrupts, drivers or even memory management
    # exist, which is exactly when a kernel most needs to say what is wrong.  On the native
    # path no trap reaches us one by one: we tell the Host, as data, which config writes set
    # which field of the window (`window_effect`) and through which valid windows a write
    # only prints (`quiet_windows`: emerg_wr's), and its C hook queues all eight `out`s of
    # each character when the fields it saw written make such a window.  The queue reaches
    # us in order, at the latest when a newline is written, so a line shows when complete
    # ("Port I/O, served in C").  Any other window, or any doubt, still comes here at once.
    def _window(self) -> tuple[int, int, int]:
        cap = PciCfg.CAP_PCI_CFG
        bar = self.config[cap + VirtioCap.BAR]
        offset, length = struct.unpack_from("<II", self.config, cap + VirtioCap.OFFSET)
        return bar, offset, length

    def _window_valid(self, bar: int, offset: int, length: int) -> bool:
        return (bar == 0 and length in (1, 2, 4) and offset % length == 0
                and offset + length <= self.mmio_size)

    def window_effect(self, offset: int, size: int) -> Window:
        if offset == PciCfg.PCI_CFG_DATA:
            return Window.DATA
        if (offset, size) in _WINDOW_FIELDS:
            return _WINDOW_FIELDS[offset, size]
        first, end = PciCfg.CAP_PCI_CFG + VirtioCap.BAR, PciCfg.CAP_PCI_CFG + VirtioCap.LENGTH + 4
        return Window.UNSETTLED if offset < end and first < offset + size else Window.UNTOUCHED

    def quiet_windows(self) -> frozenset[tuple[int, int, int]]:
        return frozenset((0, offset, length) for offset, length in self.quiet_bar0_writes()
                         if self._window_valid(0, offset, length))

    def quiet_bar0_writes(self) -> frozenset[tuple[int, int]]:
        """(offset, size): the BAR0 writes we take whatever the value and our state, with
        no effect but their output."""
        return frozenset()

    def _window_read(self) -> int:
        bar, offset, length = self._window()
        if not self._window_valid(bar, offset, length):
            self.bad_driver(f"Invalid cfg_access to bar{bar}, offset {offset} len {length}")
        return self.mmio_read(offset, length)

    def _window_write(self, size: int, value: int) -> bool:
        bar, offset, length = self._window()
        if not self._window_valid(bar, offset, length):
            return False
        self.mmio_write(offset, length, value & ((1 << 8 * length) - 1))
        return True

    # --- BAR0 ----------------------------------------------------------------------------
    # tour:D.50 BAR0: a Guest load or store reaches a device
    # Once the driver runs it uses BAR0 with ordinary loads and stores.  The original left
    # those pages unmapped: each access faulted, and the Launcher decoded the faulting
    # instruction by hand to learn the register and the value.  Here each BAR0 page is an
    # emulator MMIO region (`Guest.map_mmio`), so the emulator calls `mmio_read` and
    # `mmio_write` on the vCPU's thread with the access's true width.  Below offset 60 is the
    # virtio transport (virtio/transport.py), above it the device's own configuration.  Once a
    # device has killed the Guest for breaking the rules, `DriverRefused` abandons the access
    # and the device answers nothing more: nothing the Guest asked for afterwards is done.
    def mmio_read(self, offset: int, size: int) -> int:
        """A Guest read of BAR0 (from the Host's MMIO hook, or through the PCI_CFG window)."""
        if self.refused:
            return 0
        try:
            return self.bar0_read(offset, size)
        except DriverRefused:
            return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.refused:
            return
        with contextlib.suppress(DriverRefused):
            self.bar0_write(offset, size, value)

    def bar0_read(self, offset: int, size: int) -> int:
        if offset >= VirtioMmio.DEVICE:
            at = offset - VirtioMmio.DEVICE
            if at + size > len(self.device_config):
                self.bad_driver("read past end")
            return int.from_bytes(self.device_config[at:at + size], "little")
        return self.transport_read(offset, size)

    def bar0_write(self, offset: int, size: int, value: int) -> None:
        if offset >= VirtioMmio.DEVICE:
            self.device_config_write(offset - VirtioMmio.DEVICE, size, value)
            return
        self.transport_write(offset, size, value)

    def device_config_write(self, at: int, size: int, value: int) -> None:
        """Device config is read-only (the console's emerg_wr is the one exception)."""
        self.bad_driver(f"Unexpected write to offset {VirtioMmio.DEVICE + at}")

    def transport_read(self, offset: int, size: int) -> int:
        """Common configuration, notify and ISR: the virtio transport's (virtio/transport.py)."""
        raise NotImplementedError

    def transport_write(self, offset: int, size: int, value: int) -> None:
        raise NotImplementedError


def _within(offset: int, size: int, start: int, end: int) -> bool:
    return start <= offset and offset + size <= end


def _power_of_two_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()

