"""The virtio console: slot 1, irq 1, the Guest's terminal (spec §7.3, §8.4).

Before any driver binds, a 4.x Guest prints through the console's `emerg_wr`
device-config register, reached through the PCI_CFG window one byte at a time.
Once the driver runs, output arrives on the "output" queue and goes to our stdout;
what the user types (or pipes) fills the buffers the Guest leaves on "input".
Three Ctrl-C in a row within a second, or Ctrl-], end the Launcher whatever the
Guest does (the original's escape hatch, and telnet's).  When piped input ends, the
Guest gets one Ctrl-D, as if typed.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from collections.abc import Callable

from lguest import abi
from lguest.launcher.virtio.queue import BadDriver, Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice, wait_for_chains

VIRTIO_CONSOLE_F_EMERG_WRITE = 2
CTRL_C = b"\x03"
ESCAPE = b"\x1d"  # Ctrl-]
END_OF_INPUT = b"\x04"  # Ctrl-D
CTRL_C_COUNT = 3
CTRL_C_WINDOW = 1.0  # seconds
POLL_SECONDS = 0.1


class ConsoleDevice(VirtioDevice):
    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, write: Callable[[bytes], None],
                 input_fd: int | None = None) -> None:
        super().__init__("console", abi.VirtioId.CONSOLE, abi.PCI_CLASS_CONSOLE, irq,
                         bytes(abi.VIRTIO_CONSOLE_CONFIG_SIZE), 1 << VIRTIO_CONSOLE_F_EMERG_WRITE,
                         [("input", serve_input), ("output", serve_output)], ram, ram_size)
        self.write = write
        self.input_fd = input_fd
        self.escaped = False  # the user asked to stop the Launcher from the keyboard
        self.on_escape: Callable[[], None] = lambda: None
        self._ctrl_c: list[float] = []

    def device_config_write(self, at: int, size: int, value: int) -> None:
        if at == abi.VIRTIO_CONSOLE_EMERG_WR and size == 4:
            self.write(bytes([value & 0xFF]))
            return
        super().device_config_write(at, size, value)

    def escape_requested(self, data: bytes) -> bool:
        """Ctrl-] alone, or the third lone Ctrl-C within a second."""
        if data == ESCAPE:
            return True
        if data != CTRL_C:
            self._ctrl_c.clear()
            return False
        now = time.monotonic()
        self._ctrl_c = [t for t in self._ctrl_c if now - t < CTRL_C_WINDOW] + [now]
        return len(self._ctrl_c) >= CTRL_C_COUNT


def serve_output(device: VirtioDevice, queue: Virtqueue) -> None:
    assert isinstance(device, ConsoleDevice)
    for chain in wait_for_chains(device, queue):
        if chain.into:
            raise BadDriver("Input buffers in console output queue?")
        device.write(chain.out_bytes())
        queue.push(chain.head, 0)
        device.signal(queue)


def serve_input(device: VirtioDevice, queue: Virtqueue) -> None:
    """Fill each input buffer with whatever the terminal (or pipe) gives us next."""
    assert isinstance(device, ConsoleDevice)
    fd = device.input_fd
    if fd is None:
        return
    for chain in wait_for_chains(device, queue):
        if chain.out:
            raise BadDriver("Output buffers in console input queue?")
        room = sum(len(b) for b in chain.into)
        data = read_when_ready(device, fd, room)
        if data is None:
            if device.running and not os.isatty(fd):
                # The end of a piped script: tell the Guest as a person at a terminal
                # would, with one Ctrl-D (the original just stopped reading).
                queue.push(chain.head, chain.scatter(END_OF_INPUT))
                device.signal(queue)
            return
        if device.escape_requested(data):
            device.escaped = True
            device.on_escape()
            return
        queue.push(chain.head, chain.scatter(data))
        device.signal(queue)


def read_when_ready(device: VirtioDevice, fd: int, room: int) -> bytes | None:
    """Up to `room` bytes from fd, waiting (but noticing a reset); None at end of input."""
    while device.running:
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if ready:
            data = os.read(fd, room)
            return data or None
    return None
