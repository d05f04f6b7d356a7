"""The devices a command line can add: one entry each (spec §8.1, §8.4).

A device is one module under `virtio/` and one entry here: the option that asks for
it, the lines `lguest --help` shows for it, and the constructor that builds it from
the option's value.  The parser (options.py) and the machine (machine.py) know
devices only through this table, so adding a device touches nothing else.  The
console is not here: every Guest has one, always in PCI slot 1.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass

from lguest.launcher.pci import HostLink
from lguest.launcher.virtio.block import BlockDevice
from lguest.launcher.virtio.net import NetDevice
from lguest.launcher.virtio.rng import RngDevice
from lguest.launcher.virtio.transport import VirtioDevice

# (the option's value, "" for a flag; irq; Guest RAM; its size; the device's link to the Host)
# -> the device, or LoadError.
Constructor = Callable[[str, int, mmap.mmap, int, HostLink], VirtioDevice]


# tour:L.20 One entry per device
# Every device the user can add has exactly one entry in the table below: the option,
# its help text, and a constructor taking the option's value, the device's irq and the
# Guest's RAM.  The parser builds its option tables and the usage text from it, and the
# machine calls the constructor; the device itself (its registers, its queues, the
# methods that serve them) is one module under virtio/.  A constructor checks what the
# user gave it (can the file be opened? is that a port number?) before the Guest
# exists, so a bad --block is one `lguest: ...` line and exit status 2, never a dead Guest.
@dataclass(frozen=True)
class DeviceOption:
    kind: str  # the option is --<kind>; Options.devices names it so
    value: str | None  # what its value is called in "needs a value"; None: a flag, no value
    help: str  # its lines in the usage text, each ending in a newline
    make: Constructor


DEVICE_OPTIONS = {option.kind: option for option in (
    DeviceOption("block", "file",
                 "  --block=<file>             add a virtio block device backed by <file> (repeatable)\n",
                 BlockDevice.from_option),
    DeviceOption("rng", None,
                 "  --rng                      add a virtio entropy device (reads /dev/urandom)\n",
                 RngDevice.from_option),
    DeviceOption("tunnet", "arg",
                 "  --tunnet=<ipaddr>[:<mac>]  add a virtio network device on a tap interface\n"
                 "  --tunnet=bridge:<bridge>[:<mac>]\n"
                 "                             ... or one attached to an existing bridge (repeatable)\n",
                 NetDevice.over_tap),
    DeviceOption("net", "spec",
                 "  --net=udp:<port>:<host>:<port>\n"
                 "                             a network device wired to another Guest over UDP on\n"
                 "                             this machine: no root needed (repeatable)\n",
                 NetDevice.over_udp),
)}
