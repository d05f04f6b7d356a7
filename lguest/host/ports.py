"""Port reads with a fixed answer, served in C (ports.c; no lguest counterpart:
lguest's Launcher saw every port access, in C, for the price of an exit).

Linux's boot reads an absent port some 100,000 times, and the Launcher answers
an absent port with all ones whatever happens: a Python callback for each costs
far more than the read.  So the Launcher declares, as data, which ports always
answer the same (`PortBus.read_answers`), and the Host's `in` hook becomes C
that consults that table and calls the Switcher's Python hook for everything
else.  What the table cannot know stays in Python: a read from ring 3 or
virtual-8086 mode (a #GP), and any read while the Host has news the hook cannot
see (an exit pending, a failed hook, a frame waiting for the trampoline): then
`ask_python` sends every read to the Python hook.

What it owns: the table, the C hook's installation in one engine, and the count
of reads the Launcher never saw (--stats).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import UC_HOOK_INSN, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_REG_CS, UC_X86_REG_EFLAGS

from lguest.host import native

NPORTS = 0x10000
InHook = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)


class _Table(ctypes.Structure):
    """struct port_table of ports.c."""

    _fields_ = (("python_decides", ctypes.c_int32), ("reg_read", ctypes.c_void_p), ("cs", ctypes.c_int32),
                ("eflags", ctypes.c_int32), ("python", InHook), ("served", ctypes.c_uint64),
                ("fixed", ctypes.c_uint8 * NPORTS), ("answer", ctypes.c_uint32 * NPORTS))


# tour:S.150 Fixed port reads, served in C
# Linux's boot calibrates against the PIT by reading an absent port some 100,000 times, and
# an absent port reads all ones whatever happens.  The Launcher says so as data (which
# ports answer what, and which depend on its state), and on the native path the `in` hook
# is C that answers from that table.  Everything the table cannot decide -- a port with
# state (PCI configuration), a read from ring 3 or virtual-8086 mode that must fault, a read
# while the Host has an exit pending -- goes to the Switcher's Python hook, as if the C one
# were not there.
class FixedPorts:
    """The C `in` hook of one engine, with the Launcher's fixed answers."""

    def __init__(self, uc: Uc, answers: tuple[int, dict[int, int | None]],
                 python: Callable[[Uc, int, int, object], int]) -> None:
        table = self._table = _Table()
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.cs, table.eflags = UC_X86_REG_CS, UC_X86_REG_EFLAGS
        table.python = InHook(lambda _uc, port, size, _data: python(uc, port, size, None))
        default, exceptions = answers
        native.library().lguest_ports_fill(ctypes.byref(table), ctypes.c_uint32(default))
        for port, answer in exceptions.items():
            table.fixed[port] = answer is not None
            table.answer[port] = answer or 0
        self._hook = native.add_hook(uc, UC_HOOK_INSN, "lguest_port_in_hook", table, 1, 0,
                                     ctypes.c_int(UC_X86_INS_IN))

    @property
    def served(self) -> int:
        """Reads answered in C, which the Launcher never saw."""
        return self._table.served

    def release(self) -> None:
        """The engine is closed: let go of the Python hook (no cycle keeps the table)."""
        self._table.python = InHook()

    def ask_python(self, ask: bool) -> None:
        """Send every read to the Python hook (True) or only those the table cannot answer."""
        self._table.python_decides = ask
