"""The virtio console: slot 1, irq 1, and the Guest's first voice (spec §7.3, §8).

Before any driver binds, a 4.x Guest prints through the console's `emerg_wr`
device-config register, reached through the PCI_CFG window one byte at a time.
That is all this device does so far; its virtqueues come with the virtio transport.
"""

from __future__ import annotations

from collections.abc import Callable

from lguest import abi
from lguest.launcher.pci import VirtioPciDevice


class ConsoleDevice(VirtioPciDevice):
    """The virtio console (slot 1, irq 1); so far only its emergency write register."""

    def __init__(self, irq: int, write: Callable[[bytes], None]) -> None:
        super().__init__("console", abi.VirtioId.CONSOLE, *abi.PCI_CLASS_CONSOLE, irq,
                         bytes(abi.VIRTIO_CONSOLE_CONFIG_SIZE))
        self.write = write

    def device_config_write(self, at: int, size: int, value: int) -> None:
        if at == abi.VIRTIO_CONSOLE_EMERG_WR and size == 4:
            self.write(bytes([value & 0xFF]))
            return
        super().device_config_write(at, size, value)
