"""The entropy device (`--rng`): every buffer the Guest offers comes back full of
the host's randomness (os.urandom, where the original read /dev/urandom)."""

from __future__ import annotations

import mmap
import os

from lguest import abi
from lguest.launcher.pci import BadDriver, HostLink
from lguest.launcher.virtio.queue import Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice


class RngDevice(VirtioDevice):
    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, *, host: HostLink) -> None:
        super().__init__("rng", abi.VirtioId.RNG, abi.PCI_CLASS_RNG, irq, b"", 0,
                         [("input", self.serve_random)], ram, ram_size, host)

    @classmethod
    def from_option(cls, value: str, irq: int, ram: mmap.mmap, ram_size: int, host: HostLink) -> RngDevice:
        """`--rng` (it takes no value)."""
        return cls(irq, ram, ram_size, host=host)

    def serve_random(self, queue: Virtqueue) -> None:
        for chain in self.chains(queue):
            if chain.out:
                raise BadDriver("Output buffers in rng queue?")
            written = 0
            for buffer in chain.into:
                buffer[:] = os.urandom(len(buffer))
                written += len(buffer)
            queue.push(chain.head, written)
            self.signal(queue)
