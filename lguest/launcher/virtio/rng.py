"""The entropy device (`--rng`): every buffer the Guest offers comes back full of
the host's randomness (os.urandom, where the original read /dev/urandom)."""

from __future__ import annotations

import mmap
import os

from lguest import abi
from lguest.launcher.virtio.queue import BadDriver, Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice, wait_for_chains


def serve_random(device: VirtioDevice, queue: Virtqueue) -> None:
    for chain in wait_for_chains(device, queue):
        if chain.out:
            raise BadDriver("Output buffers in rng queue?")
        written = 0
        for buffer in chain.into:
            buffer[:] = os.urandom(len(buffer))
            written += len(buffer)
        queue.push(chain.head, written)
        device.signal(queue)


def rng_device(irq: int, ram: mmap.mmap, ram_size: int) -> VirtioDevice:
    return VirtioDevice("rng", abi.VirtioId.RNG, abi.PCI_CLASS_RNG, irq, b"", 0,
                        [("input", serve_random)], ram, ram_size)
