"""Counting what the Host does, by kind: the figures behind `--stats=json`,
`monitor hcalls` and the timeline's totals.

A `Census` is a tracer (core.Tracer): the run loop tells it of every exit,
hypercall and interrupt.  Time is split without touching the Host: at each exit
the Switcher's running total of seconds inside the emulator says how long the
Guest just ran; the rest of the time since the previous exit was the Host's (and
the Launcher's) work for that previous exit, charged to its category.
"""

from __future__ import annotations

import time
from collections import Counter

from lguest import abi
from lguest.host.core import Guest
from lguest.host.switcher import Exit, ExitKind

HCALL_NAMES = {int(h): h.name for h in abi.Hcall}
TRAP_NAMES = {int(t): t.name for t in abi.Trap}
# The Host's (and the Launcher's) Python hooks, run inside the emulator without an exit:
# TLB fills, port and device I/O, traps served in the hook.
HOOKS = "hooks inside the emulator"


def hcall_name(nr: int) -> str:
    return HCALL_NAMES.get(nr, f"#{nr}")


def exit_category(guest: Guest, exit_: Exit) -> str:
    """What one return to the Host was for."""
    if exit_.kind is ExitKind.KICKED:
        return "kick"
    if exit_.kind is ExitKind.PAGE_FAULT:
        return "page fault"
    if exit_.trapnum == abi.LGUEST_TRAP_ENTRY and guest.switcher.cpl <= abi.GUEST_PL:
        return "hypercall"
    return "trap"


class Census:
    only_counts = True  # hypercalls served in C need not be seen, only counted (count_served)

    def __init__(self) -> None:
        self.hcalls: Counter[str] = Counter()
        self.traps: Counter[int] = Counter()  # exits for a CPU trap or `int n`, by vector
        self.exits: Counter[str] = Counter()  # by category
        self.irqs: Counter[int] = Counter()
        self.seconds: Counter[str] = Counter()  # "emulating", and the Host's time by category
        # (when, emulator total, hooks total, category) at the previous exit
        self._last: tuple[float, float, float, str] | None = None

    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None:
        self.hcalls[hcall_name(args[0])] += 1

    def count_served(self, nr: int, count: int) -> None:
        """`count` more of hypercall `nr`, served in C where no tracer sees them."""
        self.hcalls[hcall_name(nr)] += count

    def trap(self, guest: Guest, exit_: Exit) -> None:
        category = exit_category(guest, exit_)
        self.exits[category] += 1
        if category == "trap":
            self.traps[exit_.trapnum] += 1
        now, emulated, hooked = time.perf_counter(), guest.switcher.emulating, guest.switcher.in_hooks
        if self._last is None:
            self.seconds["emulating"] += emulated  # the first run, up to the first exit
            self.seconds[HOOKS] += hooked
        else:
            when, emulated_then, hooked_then, previous = self._last
            ran, hooks = emulated - emulated_then, hooked - hooked_then
            self.seconds["emulating"] += ran
            self.seconds[HOOKS] += hooks
            self.seconds[previous] += max(0.0, now - when - ran - hooks)
        self._last = (now, emulated, hooked, category)

    def irq(self, guest: Guest, irq: int) -> None:
        self.irqs[irq] += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "hypercalls_by_name": dict(sorted(self.hcalls.items())),
            "traps_by_vector": {str(n): c for n, c in sorted(self.traps.items())},
            "exits_by_kind": dict(sorted(self.exits.items())),
            "interrupts_by_irq": {str(n): c for n, c in sorted(self.irqs.items())},
            "seconds_by_category": {k: round(v, 6) for k, v in sorted(self.seconds.items())},
        }
