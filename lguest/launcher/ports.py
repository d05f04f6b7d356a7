"""Port I/O as the Launcher answers it (spec §7.1).

The Host hands every `in`/`out` the Guest kernel executes to `port_in` and
`port_out`.  Only the PCI configuration ports mean anything; the PS/2 status port
reads 1 (nothing to read, so Linux's i8042 probe gives up), every other port reads
all ones and ignores writes, as an empty ISA bus would.
"""

from __future__ import annotations

from collections.abc import Callable

from lguest import abi
from lguest.launcher.pci import PciBus

ALL_ONES = 0xFFFFFFFF


# tour:D.10 Port I/O: the way in
# A 4.x Guest finds its devices as a PC does, through PCI configuration space, which it
# reaches with `in` and `out` on ports 0xCF8 (the address) and 0xCFC (the data).  The
# Guest kernel runs at ring 1 without I/O permission, so each such instruction traps;
# the Switcher hands it to `port_in` / `port_out` and finishes the instruction (chapter
# S).  Everything else reads as all ones, like an empty ISA bus, so Linux's probes of
# the keyboard controller and friends find nothing; those fixed answers are also data
# (`read_answers`) the Host may serve without calling us ("Fixed port reads, served in C").
class Ports:
    def __init__(self, pci: PciBus, warn: Callable[[str], None]) -> None:
        self.pci = pci
        self.warn = warn
        self.count = 0  # the accesses the Launcher answered
        self._answers = self.read_answers()

    def read_answers(self) -> tuple[int, dict[int, int | None]]:
        """Port reads as data the Host may serve without asking: the answer of every
        port not listed, and per listed port its answer, or None where it depends
        on state (only those need `port_in`).  Answers are cut to the read's size."""
        answers: dict[int, int | None] = {abi.PORT_PS2_STATUS: 1}
        for base in (abi.PCI_CONFIG_ADDR, abi.PCI_CONFIG_DATA):
            answers.update(dict.fromkeys(range(base, base + 4)))
        return ALL_ONES, answers

    def port_in(self, port: int, size: int) -> int:
        self.count += 1
        if abi.PCI_CONFIG_ADDR <= port < abi.PCI_CONFIG_ADDR + 4:
            return self.pci.address_read(port - abi.PCI_CONFIG_ADDR, size)
        if abi.PCI_CONFIG_DATA <= port < abi.PCI_CONFIG_DATA + 4:
            return self.pci.data_read(port - abi.PCI_CONFIG_DATA, size)
        default, answers = self._answers
        return (answers.get(port, default) or 0) & (ALL_ONES >> (32 - 8 * size))

    def port_out(self, port: int, size: int, value: int) -> bool:
        """False when the write is refused (a rejected PCI config write)."""
        self.count += 1
        if abi.PCI_CONFIG_ADDR <= port < abi.PCI_CONFIG_ADDR + 4:
            self.pci.address_write(port - abi.PCI_CONFIG_ADDR, size, value)
        elif abi.PCI_CONFIG_DATA <= port < abi.PCI_CONFIG_DATA + 4 and not self.pci.data_write(
                port - abi.PCI_CONFIG_DATA, size, value):
            mask = ALL_ONES >> (32 - 8 * size)
            self.warn(f"Attempt to write to port {port} ({mask:#x} mask)")
            return False
        return True
