"""Port I/O served in C (ports.c; no lguest counterpart: lguest's Launcher saw every
port access, in C, for the price of an exit).

Linux's boot reads an absent port some 100,000 times, and the Launcher answers
an absent port with all ones whatever happens: a Python callback for each costs
far more than the read.  Its early console writes each byte with eight `out`s,
seven of which only set the PCI address latch or a field of the console's PCI
configuration; the eighth, the byte, goes through that window to the console.
So the Launcher declares, as data, which ports always answer the
same (`PortBus.read_answers`) and which writes are quiet (`PortBus.quiet_writes`:
accepted whatever the value, with no effect but on its own state), and the
Host's `in` and `out` hooks become C that consults that table and calls the
Switcher's Python hooks for everything else.

A quiet write needs no answer at once, only to reach the Launcher in order,
before anything can observe what it changed: C queues it, and `drain` hands the
queue to `port_out`, oldest first.  The Switcher drains before every port access
and device access its Python hooks see and whenever the emulator stops, so no
write is lost however a run ends (a kill, a signal); C asks for a drain when the
queue is full.  A write the Launcher may refuse is queued only when C is certain
it will not: a refusal is a #GP at that `out` (spec §7.1), which only the moment
of the write can give.  That certainty exists for one such write, the early
console's byte: the Launcher says which selected writes set which field of which
function's PCI_CFG window (`Window`), and through which whole windows a write is
quiet but for its output (`QuietWrites.quiet_windows`, valid by the Launcher's own
rule); C tracks the windows from the writes it queued since anything last went
to Python (`forget_windows`), and queues the byte when the window it knows is
one of those.  A queued newline drains the queue from the hook, so each line
is printed as soon as it is complete.

What the tables cannot know stays in Python: an access from ring 3 or virtual-8086
mode (a #GP), and any access while the Host has news the hooks cannot see (an
exit pending, a failed hook, a frame waiting for the trampoline): then
`ask_python` sends every access to the Python hooks.

What it owns: the table, the C hooks' installation in one engine, the queue of
writes, and the counts of reads the Launcher never saw and of writes it saw late.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INSN, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_REG_CS, UC_X86_REG_EFLAGS

from lguest.host import native

if TYPE_CHECKING:
    from lguest.host.switcher import PortBus


class Window(IntEnum):
    """What a write to the PCI data ports does to its function's PCI_CFG window
    (ports.c's enum window_effect)."""

    UNTOUCHED = 0
    BAR = 1  # sets the window's bar
    OFFSET = 2  # sets its offset
    LENGTH = 3  # sets its length
    UNSETTLED = 4  # changes its fields some other way: C no longer knows them
    DATA = 5  # goes through it to BAR0: quiet only through a window in `quiet_windows`


@dataclass(frozen=True)
class QuietWrites:
    """The port writes a Launcher takes quietly: accepted whatever the value, with no
    effect but on its own state, which nothing sees before its next port or device
    access.  The Host may queue them and hand them over later, in order."""

    loud: range  # the ports where a write may be refused or be seen at once; every other is quiet
    selector: range  # ports whose full-width write (at the first) selects what a loud write does
    # Per selected value, the quiet (port, size) writes and the loud window data writes, each
    # with its function (a PCI slot) and what it does to that function's window.
    when_selected: dict[int, dict[tuple[int, int], tuple[int, Window]]]
    # (function, bar, offset, length): the windows through which a data write is quiet.
    quiet_windows: frozenset[tuple[int, int, int, int]]


NPORTS = 0x10000
QUEUE = 256
FUNCTIONS = 32
U32 = ctypes.c_uint32
InHook = ctypes.CFUNCTYPE(U32, ctypes.c_void_p, U32, ctypes.c_int, ctypes.c_void_p)
OutHook = ctypes.CFUNCTYPE(None, ctypes.c_void_p, U32, ctypes.c_int, U32, ctypes.c_void_p)
DrainHook = ctypes.CFUNCTYPE(None)
Guard = Callable[[Callable[..., object], object], Callable[..., object]]


class QueuedWriteRefused(RuntimeError):
    """The Launcher refused a write it had declared quiet: our bug, never the Guest's."""


class _Queued(ctypes.Structure):
    _fields_ = (("port", U32), ("size", U32), ("value", U32))


class _Window(ctypes.Structure):
    _fields_ = (("epoch", U32), ("known", U32), ("bar", U32), ("offset", U32), ("length", U32))


class _Table(ctypes.Structure):
    """struct port_table of ports.c."""

    _fields_ = (("python_decides", ctypes.c_int32), ("reg_read", ctypes.c_void_p), ("cs", ctypes.c_int32),
                ("eflags", ctypes.c_int32), ("python", InHook), ("python_out", OutHook), ("drain", DrainHook),
                ("selector", U32), ("selector_ports", U32), ("selected", U32), ("selected_known", U32),
                ("quiet_selected", ctypes.POINTER(ctypes.c_uint64)), ("effects", ctypes.POINTER(U32)),
                ("quiet_selected_count", U32), ("quiet_windows", ctypes.POINTER(ctypes.c_uint64)),
                ("quiet_windows_count", U32), ("epoch", U32), ("served", ctypes.c_uint64),
                ("deferred", ctypes.c_uint64), ("passed", ctypes.c_uint64), ("queued", U32),
                ("queue", _Queued * QUEUE), ("windows", _Window * FUNCTIONS),
                ("fixed", ctypes.c_uint8 * NPORTS),
                ("quiet", ctypes.c_uint8 * NPORTS), ("answer", U32 * NPORTS))


# tour:S.150 Port I/O, served in C
# Linux's boot calibrates against the PIT by reading an absent port some 100,000 times, and
# an absent port reads all ones whatever happens.  The Launcher says so as data (which
# ports answer what, and which depend on its state), and on the native path the `in` hook
# is C that answers from that table.  The early console spends eight `out`s on each byte,
# seven of them quiet: the PCI address latch, and fields of the console's configuration that
# the Launcher accepts whatever the value, which nothing sees until the next access.  Which
# writes are quiet is data too (per config address, for the data ports), so C queues them,
# and the Switcher hands the queue to the Launcher, in order, before any other port or
# device access and whenever the emulator stops.  The eighth, the byte itself, may be
# refused (an invalid window is a #GP at that very `out`): C queues it only when the window
# it saw those seven set is one the Launcher named as valid and quiet but for its output,
# and a newline hands the queue over at once, so each line shows as soon as it is
# complete.  Every other write the Launcher may refuse goes to Python at its `out`.
# Everything else the tables cannot decide -- an access from ring 3 or
# virtual-8086 mode that must fault, an access while the Host has an exit pending -- goes to
# the Switcher's Python hooks, as if the C ones were not there.
class FixedPorts:
    """The C `in` and `out` hooks of one engine, with the Launcher's fixed answers and
    the writes it takes quietly."""

    def __init__(self, uc: Uc, bus: PortBus, python_in: Callable[[Uc, int, int, object], int],
                 python_out: Callable[[Uc, int, int, int, object], None], guard: Guard) -> None:
        """`python_in`, `python_out`: the Switcher's hooks; `guard` makes our drain safe
        to call from C (Switcher._guard)."""
        library = native.library()
        library.lguest_port_table_size.restype = ctypes.c_size_t
        if library.lguest_port_table_size() != ctypes.sizeof(_Table):
            raise native.NativeBuildError("ports.c and ports.py disagree on their table")
        self._port_out = bus.port_out
        table = self._table = _Table()
        table.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        table.cs, table.eflags = UC_X86_REG_CS, UC_X86_REG_EFLAGS
        table.python = InHook(lambda _uc, port, size, _data: python_in(uc, port, size, None))
        table.python_out = OutHook(lambda _uc, port, size, value, _data:
                                   python_out(uc, port, size, value, None))
        table.drain = DrainHook(guard(self.drain, None))
        default, exceptions = bus.read_answers()
        library.lguest_ports_fill(ctypes.byref(table), U32(default), ctypes.c_uint8(1))
        for port, answer in exceptions.items():
            table.fixed[port] = answer is not None
            table.answer[port] = answer or 0
        self._kept: tuple[ctypes.Array, ...] = ()
        self.learn_writes(bus.quiet_writes())
        self._hooks = [native.add_hook(uc, UC_HOOK_INSN, function, table, 1, 0, ctypes.c_int(insn))
                       for function, insn in (("lguest_port_in_hook", UC_X86_INS_IN),
                                              ("lguest_port_out_hook", UC_X86_INS_OUT))]

    def learn_writes(self, quiet: QuietWrites) -> None:
        """Which writes C may queue: the Launcher's word now (it grows as devices join the bus)."""
        table = self._table
        for port in quiet.loud:
            table.quiet[port] = 0
        table.selector, table.selector_ports = quiet.selector.start, len(quiet.selector)
        entries = sorted((selected << 32 | port << 8 | size, function << 8 | effect)
                         for selected, writes in quiet.when_selected.items()
                         for (port, size), (function, effect) in writes.items())
        windows = sorted(function << 48 | bar << 40 | length << 32 | offset
                         for function, bar, offset, length in quiet.quiet_windows)
        keys = (ctypes.c_uint64 * len(entries))(*(key for key, _ in entries))
        effects = (U32 * len(entries))(*(effect for _, effect in entries))
        quiet_windows = (ctypes.c_uint64 * len(windows))(*windows)
        self._kept = (keys, effects, quiet_windows)  # C reads them while we hold them
        table.quiet_selected, table.effects, table.quiet_selected_count = keys, effects, len(entries)
        table.quiet_windows, table.quiet_windows_count = quiet_windows, len(windows)
        self.forget_windows()

    def forget_windows(self) -> None:
        """Python is about to run: what C saw the windows set to is no longer the whole story."""
        self._table.epoch += 1

    def drain(self) -> None:
        """Hand the queued writes to the Launcher, oldest first (the queue emptied)."""
        table = self._table
        count = table.queued
        if not count:
            return
        writes = [(w.port, w.size, w.value) for w in table.queue[:count]]
        table.queued = 0
        for port, size, value in writes:
            if not self._port_out(port, size, value):
                raise QueuedWriteRefused(f"the Launcher refused a queued write to port {port:#x}")

    @property
    def served(self) -> int:
        """Reads answered in C, which the Launcher never saw."""
        return self._table.served

    @property
    def deferred(self) -> int:
        """Writes C queued, which the Launcher saw only at the next drain."""
        return self._table.deferred

    @property
    def passed(self) -> int:
        """Writes C handed to the Switcher's Python hook."""
        return self._table.passed

    def release(self) -> None:
        """The engine is closed: let go of the Python hooks (no cycle keeps the table)."""
        self._table.python = InHook()
        self._table.python_out = OutHook()
        self._table.drain = DrainHook()

    def ask_python(self, ask: bool) -> None:
        """Send every access to the Python hooks (True) or only those the table cannot serve."""
        self._table.python_decides = ask
