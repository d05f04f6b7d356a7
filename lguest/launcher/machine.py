"""One boot of a Guest: its RAM, kernel, the PCI bus with its devices, and the Host.

Devices are created in command-line order after the console (always slot 1,
irq 1), as the original Launcher did; each gets the next PCI slot, the next irq
and a page of MMIO window above the 1 MiB gap that follows RAM (§3.1).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass

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
from lguest.launcher.devices import DEVICE_OPTIONS
from lguest.launcher.options import Options
from lguest.launcher.pci import HostLink, PciBus
from lguest.launcher.ports import Ports
from lguest.launcher.snapshot import Snapshot
from lguest.launcher.virtio.console import ConsoleDevice
from lguest.launcher.virtio.transport import VirtioDevice

MIB = 1 << 20


@dataclass
class Machine:
    guest: Guest
    ram: mmap.mmap
    kernel: KernelImage | None  # None for a Guest restored from a snapshot
    ports: Ports
    console: ConsoleDevice
    devices: list[VirtioDevice]

    def close(self) -> None:
        """Stop every device's threads, release files and sockets, then the Guest's
        emulator and RAM (a restart loop must not grow by a machine every boot)."""
        for device in self.devices:
            device.stop()
        for device in self.devices:
            device.close()
        self.guest.close()
        try:
            for device in self.devices:
                device.release_ram()
            self.ram.close()
        except BufferError:
            pass  # a device thread that would not stop still holds a buffer: the collector frees it


# tour:L.30 A machine is built
# One boot of a Guest is put together here, in the order the Guest needs things:
# Guest RAM; the kernel copied into it (and an initrd at its top); `boot_params`, the
# page Linux reads first; the PCI bus and the port I/O answers; the Host's `Guest`,
# which owns the virtual CPU, the shadow page tables and the run loop; and the devices,
# the console always first, each built with its link to that Guest.  Last each device
# takes a PCI slot, an irq and a page of MMIO.  Nothing runs yet: main.py calls
# `guest.run()`.  When the Guest asks to restart, all of this is closed (`Machine.close`:
# the devices, the Host's emulator, the RAM) and built again, as the original Launcher
# re-executed itself.
def build_machine(opts: Options, kernel_path: str, output: Callable[[bytes], None],
                  keyboard: Keyboard | None = None, say: Callable[[str], None] = lambda _: None,
                  warn: Callable[[str], None] = print, tracer: Tracer | None = None,
                  snapshot: Snapshot | None = None) -> Machine:
    """A machine ready to boot `kernel_path`, or, given a snapshot, to resume the Guest
    it holds (its RAM, the Host's state and every device's put back)."""
    ram_size = opts.mem_mib * MIB
    ram = allocate_guest_ram(ram_size)
    kernel: KernelImage | None = None
    initrd = None
    if snapshot is None:
        kernel = load_kernel(ram, ram_size, kernel_path)
        initrd = load_initrd(ram, ram_size, opts.initrd, kernel) if opts.initrd else None
        write_boot_params(ram, ram_size, opts.cmdline, initrd)
    else:
        snapshot.fill_ram(ram)
    if 1 + len(opts.devices) > abi.MAX_PCI_DEVICES - 1:  # the console, and slot 0 is the bridge
        raise LoadError(f"Can only handle {abi.MAX_PCI_DEVICES - 1} PCI devices")
    pci = PciBus()
    ports = Ports(pci, warn)
    entry = kernel.entry if kernel else 0  # a restored Guest's eip comes with its state
    # A restored Guest's mode comes with its saved options; a booted one's from its image.
    pae = opts.pae if opts.pae is not None else bool(kernel and kernel.is_pae(ram))
    guest = Guest(ram, ram_size, entry, ports, syscall_vector=opts.syscall_vector, tracer=tracer,
                  pae=pae, native=opts.native)
    host = HostLink(guest.kill, guest.interrupt)
    console = ConsoleDevice(abi.CONSOLE_IRQ, ram, ram_size, output, keyboard, host=host)
    devices = [console, *_command_line_devices(opts, ram, ram_size, host, console, guest)]
    window = ram_size + abi.DEVICE_PAGES * abi.PAGE_SIZE
    say(f"Guest: 0x0 - {ram_size:#x} ({ram_size:#x}, MMIO {window:#x}), {'PAE' if pae else 'non-PAE'} paging")
    for i, (gpa, size) in enumerate(kernel.sections if kernel else ()):
        say(f"Section {i}: size {size} addr {gpa:#x}")
    if initrd:
        say(f"mapped initrd {opts.initrd} size={initrd[1]} @ {initrd[0]:#x}")
    # tour:L.70 Devices take their places
    # Each device gets the next PCI slot (the console slot 1, after the host bridge), the next
    # irq (the console 1; irq 0 is the timer), and a page of MMIO above the gap for its BAR0
    # registers.  `map_mmio` tells the Host that the Guest's loads and stores to that page
    # are the device's business (chapter D).  Each device was built with the Host's `kill`
    # (for a driver that breaks the rules) and `interrupt` (to tell the Guest a request is
    # done), so the Guest exists before the devices do.
    for device in devices:
        slot = pci.add(device)
        device.place(window)
        guest.map_mmio(window, abi.PAGE_SIZE, device.mmio_read, device.mmio_write)
        say(f"device {slot}: {device.name}")
        window += abi.PAGE_SIZE
    machine = Machine(guest, ram, kernel, ports, console, devices)
    if snapshot is not None:
        try:
            snapshot.restore(guest, devices)
        except LoadError:
            machine.close()
            raise
        say(f"restored from {snapshot.path}")
    return machine


def _command_line_devices(opts: Options, ram: mmap.mmap, ram_size: int, host: HostLink,
                          console: ConsoleDevice, guest: Guest) -> list[VirtioDevice]:
    """Each device of the command line, in order, given its link to the Host as it is
    built.  A device the user got wrong (LoadError) leaves nothing behind: the devices
    already made, the console and the Guest are closed."""
    devices: list[VirtioDevice] = []
    try:
        for kind, value in opts.devices:
            irq = abi.CONSOLE_IRQ + 1 + len(devices)
            devices.append(DEVICE_OPTIONS[kind].make(value, irq, ram, ram_size, host))
    except LoadError:
        for device in (console, *devices):
            device.close()
        guest.close()
        raise
    return devices
