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

from lguest.launcher.virtio.block import BlockDevice
from lguest.launcher.virtio.net import NetDevice
from lguest.launcher.virtio.rng import RngDevice
from lguest.launcher.virtio.transport import VirtioDevice

# (the option's value, "" for a flag; irq; Guest RAM; its size) -> the device, or LoadError.
Constructor = Callable[[str, int, mmap.mmap, int], VirtioDevice]


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
