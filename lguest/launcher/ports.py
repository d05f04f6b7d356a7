"""Port I/O as the Launcher answers it (spec §7.1).

The Host hands every `in`/`out` the Guest kernel executes to `port_in` and
`port_out` (a write we declare quiet perhaps a little later, but in order,
before any other port or device access reaches us).  Only the PCI
configuration ports mean anything; the PS/2 status port reads 1 (nothing to
read, so Linux's i8042 probe gives up), every other port reads all ones and
ignores writes, as an empty ISA bus would.
"""

from __future__ import annotations

from collections.abc import Callable

from lguest import abi
from lguest.host.ports import QuietWrites
from lguest.launcher.pci import PciBus

ALL_ONES = 0xFFFFFFFF
PCI_ADDRESS_PORTS = range(abi.PCI_CONFIG_ADDR, abi.PCI_CONFIG_ADDR + 4)
PCI_DATA_PORTS = range(abi.PCI_CONFIG_DATA, abi.PCI_CONFIG_DATA + 4)


# tour:D.10 Port I/O: the way in
# A 4.x Guest finds its devices as a PC does, through PCI configuration space, which it
# reaches with `in` and `out` on ports 0xCF8 (the address) and 0xCFC (the data).  The
# Guest kernel runs at ring 1 without I/O permission, so each such instruction traps;
# the Switcher hands it to `port_in` / `port_out` and finishes the instruction (chapter
# S).  Everything else reads as all ones, like an empty ISA bus, so Linux's probes of
# the keyboard controller and friends find nothing; those fixed answers are also data
# (`read_answers`) the Host may serve without calling us ("Port I/O, served in C"), and
# so is which writes we take quietly (`quiet_writes`), which the Host may hand us later.
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
        answers.update(dict.fromkeys(PCI_ADDRESS_PORTS))
        answers.update(dict.fromkeys(PCI_DATA_PORTS))
        return ALL_ONES, answers

    def quiet_writes(self) -> QuietWrites:
        """Port writes as data: the ones we take quietly, accepted whatever the value
        with no effect but on our own state, which the Host may hand us later, in order,
        before our next access.  Every port but the PCI data ports is quiet (the address
        latch, and ports we ignore); a data-port write is quiet where the latched address
        names a config field its function takes quietly, or its PCI_CFG window's data while
        the window is one that only prints (PciBus.quiet_data_writes, quiet_windows)."""
        when_selected = {addr: {(abi.PCI_CONFIG_DATA + byte, size): effect
                                for (byte, size), effect in writes.items()}
                         for addr, writes in self.pci.quiet_data_writes().items()}
        return QuietWrites(loud=PCI_DATA_PORTS, selector=PCI_ADDRESS_PORTS, when_selected=when_selected,
                           quiet_windows=self.pci.quiet_windows())

    def port_in(self, port: int, size: int) -> int:
        self.count += 1
        if port in PCI_ADDRESS_PORTS:
            return self.pci.address_read(port - abi.PCI_CONFIG_ADDR, size)
        if port in PCI_DATA_PORTS:
            return self.pci.data_read(port - abi.PCI_CONFIG_DATA, size)
        default, answers = self._answers
        return (answers.get(port, default) or 0) & (ALL_ONES >> (32 - 8 * size))

    def port_out(self, port: int, size: int, value: int) -> bool:
        """False when the write is refused (a rejected PCI config write)."""
        self.count += 1
        if port in PCI_ADDRESS_PORTS:
            self.pci.address_write(port - abi.PCI_CONFIG_ADDR, size, value)
        elif port in PCI_DATA_PORTS and not self.pci.data_write(
                port - abi.PCI_CONFIG_DATA, size, value):
            mask = ALL_ONES >> (32 - 8 * size)
            self.warn(f"Attempt to write to port {port} ({mask:#x} mask)")
            return False
        return True
