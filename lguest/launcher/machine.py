"""One boot of a Guest: its RAM, kernel, the PCI bus with its devices, and the Host.

Devices are created in command-line order after the console (always slot 1,
irq 1), as the original Launcher did; each gets the next PCI slot, the next irq
and a page of MMIO window above the 1 MiB gap that follows RAM (§3.1).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from lguest import abi
from lguest.host.core import Guest, Tracer
from lguest.launcher.boot import (
    KernelImage,
    LoadError,
    allocate_guest_ram,
    load_initrd,
    load_kernel,
    write_boot_params,
)
from lguest.launcher.control import Keyboard
from lguest.launcher.options import Options
from lguest.launcher.pci import PciBus
from lguest.launcher.ports import Ports
from lguest.launcher.virtio.block import BlockDevice
from lguest.launcher.virtio.console import ConsoleDevice
from lguest.launcher.virtio.net import NetDevice, TapLink, UdpLink, parse_udp
from lguest.launcher.virtio.rng import rng_device
from lguest.launcher.virtio.transport import VirtioDevice

MIB = 1 << 20


@dataclass
class Machine:
    guest: Guest
    kernel: KernelImage
    ports: Ports
    console: ConsoleDevice
    devices: list[VirtioDevice]
    resources: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Stop every device's threads and release files and sockets."""
        for device in self.devices:
            device.stop()
        for release in self.resources:
            release()


def build_machine(opts: Options, kernel_path: str, output: Callable[[bytes], None],
                  keyboard: Keyboard | None = None, say: Callable[[str], None] = lambda _: None,
                  warn: Callable[[str], None] = print, tracer: Tracer | None = None) -> Machine:
    mem = opts.mem_mib * MIB
    ram = allocate_guest_ram(mem)
    kernel = load_kernel(ram, mem, kernel_path)
    initrd = load_initrd(ram, mem, opts.initrd, kernel) if opts.initrd else None
    write_boot_params(ram, mem, opts.cmdline, initrd)
    if 1 + len(opts.devices) > abi.MAX_PCI_DEVICES - 1:  # the console, and slot 0 is the bridge
        raise LoadError(f"Can only handle {abi.MAX_PCI_DEVICES - 1} PCI devices")
    resources: list[Callable[[], None]] = []
    console = ConsoleDevice(abi.CONSOLE_IRQ, ram, mem, output, keyboard)
    devices: list[VirtioDevice] = [console]
    for kind, value in opts.devices:
        devices.append(make_device(kind, value, abi.CONSOLE_IRQ + len(devices), ram, mem, resources))
    pci = PciBus()
    ports = Ports(pci, warn)
    guest = Guest(ram, mem, kernel.entry, ports, syscall_vector=opts.syscall_vector, tracer=tracer)
    window = mem + abi.DEVICE_PAGES * abi.PAGE_SIZE
    say(f"Guest: 0x0 - {mem:#x} ({mem:#x}, MMIO {window:#x})")
    for i, (gpa, size) in enumerate(kernel.sections):
        say(f"Section {i}: size {size} addr {gpa:#x}")
    if initrd:
        say(f"mapped initrd {opts.initrd} size={initrd[1]} @ {initrd[0]:#x}")
    for device in devices:
        slot = pci.add(device)
        device.place(window)
        guest.map_mmio(window, abi.PAGE_SIZE, device.mmio_read, device.mmio_write)
        device.fatal, device.interrupt = guest.kill, guest.interrupt
        say(f"device {slot}: {device.name}")
        window += abi.PAGE_SIZE
    guest.pages.device_limit = window >> abi.PAGE_SHIFT
    return Machine(guest, kernel, ports, console, devices, resources)


def make_device(kind: str, value: str | None, irq: int, ram, mem: int,
                resources: list[Callable[[], None]]) -> VirtioDevice:
    if kind == "rng":
        return rng_device(irq, ram, mem)
    if kind == "block":
        assert value is not None
        path, _, flag = value.partition(",")
        if flag not in ("", "ro"):
            raise LoadError(f"Bad --block '{value}': the only option is ',ro'")
        fd = open_disk(path, read_only=bool(flag))
        resources.append(lambda: os.close(fd))
        return BlockDevice(irq, ram, mem, path, fd, read_only=bool(flag))
    assert value is not None
    if kind == "net":
        try:
            port, peer = parse_udp(value)
            link = UdpLink(port, peer)
        except (ValueError, OSError) as err:
            raise LoadError(str(err)) from None
        resources.append(link.close)
        # A locally administered MAC that differs per port, so two Guests never clash.
        return NetDevice(irq, ram, mem, link, bytes([0x02, 0x00, 0x00, 0x00, port >> 8 & 0xFF, port & 0xFF]))
    if kind == "tunnet":
        try:
            tap = TapLink(value)
        except ValueError as err:
            raise LoadError(str(err)) from None
        resources.append(tap.close)
        return NetDevice(irq, ram, mem, tap, tap.mac)
    raise LoadError(f"--{kind} is not supported yet")


def open_disk(path: str, read_only: bool) -> int:
    """A --block file, checked before boot: a regular file or a block device.

    Opened without waiting (a FIFO would otherwise block the open itself), then
    made blocking again for the service thread.
    """
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NONBLOCK)
    except OSError as err:
        raise LoadError(f"Failed to open {path}: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise LoadError(f"Bad --block '{path}': not a regular file or a block device")
    os.set_blocking(fd, True)
    return fd
