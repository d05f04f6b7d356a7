"""The virtio console: slot 1, irq 1, the Guest's terminal (spec §7.3, §8.4).

Before any driver binds, a 4.x Guest prints through the console's `emerg_wr`
device-config register, reached through the PCI_CFG window one byte at a time.
Once the driver runs, output arrives on the "output" queue and goes to our stdout;
what the user types (or pipes) fills the buffers the Guest leaves on "input".
The keyboard is read by its own thread (control.py), which also watches for the
escape keys; the input queue takes what it buffered.  When piped input ends, the
Guest gets one Ctrl-D, as if typed.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

from lguest import abi
from lguest.launcher.control import Keyboard
from lguest.launcher.pci import BadDriver, HostLink
from lguest.launcher.virtio.queue import Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice

VIRTIO_CONSOLE_F_EMERG_WRITE = 2
END_OF_INPUT = b"\x04"  # Ctrl-D
EMERG_WR = (abi.VirtioMmio.DEVICE + abi.VIRTIO_CONSOLE_EMERG_WR, 4)  # its BAR0 offset and size


# tour:D.130 The console
# Once its driver runs, the console is two queues.  Output: the Guest offers buffers of
# text, and we write them to stdout.  Input: the Guest offers empty buffers ahead of time,
# and they wait in the ring until a key arrives; the keyboard thread wakes this queue's
# thread, which fills the next buffer with what was typed.  When piped input ends the
# Guest gets one Ctrl-D, as from a person at a terminal.
class ConsoleDevice(VirtioDevice):
    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, write: Callable[[bytes], None],
                 keyboard: Keyboard | None = None, *, host: HostLink) -> None:
        super().__init__("console", abi.VirtioId.CONSOLE, abi.PCI_CLASS_CONSOLE, irq,
                         bytes(abi.VIRTIO_CONSOLE_CONFIG_SIZE), 1 << VIRTIO_CONSOLE_F_EMERG_WRITE,
                         [("input", self.serve_input), ("output", self.serve_output)], ram, ram_size,
                         host)
        self.write = write
        self.keyboard = keyboard

    def device_config_write(self, at: int, size: int, value: int) -> None:
        if (abi.VirtioMmio.DEVICE + at, size) == EMERG_WR:
            self.write(bytes([value & 0xFF]))
            return
        super().device_config_write(at, size, value)

    def quiet_bar0_writes(self) -> frozenset[tuple[int, int]]:
        """emerg_wr prints a byte whatever the value and our state: the Host may queue it."""
        return frozenset({EMERG_WR})


    def serve_output(self, queue: Virtqueue) -> None:
        for chain in self.chains(queue):
            if chain.into:
                raise BadDriver("Input buffers in console output queue?")
            self.write(chain.out_bytes())
            queue.push(chain.head, 0)
            self.signal(queue)

    def serve_input(self, queue: Virtqueue) -> None:
        """Fill each input buffer with whatever the keyboard (or pipe) gave us next."""
        keyboard = self.keyboard
        if keyboard is None:
            return
        keyboard.listener = queue.notified.set
        for chain in self.chains(queue):
            if chain.out:
                raise BadDriver("Output buffers in console input queue?")
            data = self.next_keys(keyboard, queue, sum(len(b) for b in chain.into))
            if data is None and not self.running:
                queue.unpop()  # stopped while waiting for keys: the buffer stays the Guest's
                return
            if data is None:
                if not keyboard.is_terminal:
                    # The end of a piped script: tell the Guest as a person at a terminal
                    # would, with one Ctrl-D (the original just stopped reading).
                    queue.push(chain.head, chain.scatter(END_OF_INPUT))
                    self.signal(queue)
                return
            queue.push(chain.head, chain.scatter(data))
            self.signal(queue)

    def next_keys(self, keyboard: Keyboard, queue: Virtqueue, room: int) -> bytes | None:
        """Up to `room` bytes, waiting for some (but noticing a reset); None at end of input."""
        while self.running:
            data = keyboard.take(room)
            if data != b"":
                return data
            queue.notified.wait()  # set by the keyboard for new keys, and by a reset
            queue.notified.clear()
        return None
