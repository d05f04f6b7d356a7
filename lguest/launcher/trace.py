"""`--trace`: one line on stderr per hypercall, trap or interrupt.

Trap lines show the instruction at the faulting address, read from Guest memory
without disturbing the Guest and decoded by the Host's own decoder.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lguest import abi
from lguest.host.core import INSN_MAX, Guest, Tracer
from lguest.host.faultaddr import decode
from lguest.host.switcher import Exit, ExitKind

HCALL_NAMES = {int(h): h.name for h in abi.Hcall}
TRAP_NAMES = {int(t): t.name for t in abi.Trap}


class StderrTracer:
    def __init__(self, kinds: frozenset[str], out: TextIO = sys.stderr) -> None:
        self.kinds = kinds
        self.out = out

    def _line(self, text: str) -> None:
        print(f"lguest trace: {text}", file=self.out, flush=True)

    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None:
        if "hcalls" not in self.kinds:
            return
        name = HCALL_NAMES.get(args[0], f"#{args[0]}")
        shown = ", ".join(f"{a:#x}" for a in args[1:])
        self._line(f"hcall {name}({shown}){' async' if queued else ''}")

    def trap(self, guest: Guest, exit_: Exit) -> None:
        if "traps" not in self.kinds or exit_.kind is ExitKind.KICKED:
            return
        if exit_.trapnum == abi.LGUEST_TRAP_ENTRY and guest.switcher.cpl <= abi.GUEST_PL:
            return  # hypercalls have their own lines
        eip = guest.switcher.get("eip")
        if exit_.kind is ExitKind.PAGE_FAULT:
            what = f"#PF cr2={exit_.address:#x} err={exit_.errcode:#x}"
        else:
            what = f"trap {exit_.trapnum} ({TRAP_NAMES.get(exit_.trapnum, 'int')}) err={exit_.errcode:#x}"
        self._line(f"{what} at {guest.switcher.get('cs'):#x}:{eip:#x} {self._instruction(guest, eip)}")

    def irq(self, guest: Guest, irq: int) -> None:
        if "irqs" in self.kinds:
            self._line(f"irq {irq} delivered")

    @staticmethod
    def _instruction(guest: Guest, eip: int) -> str:
        code = guest.peek_virtual(eip, INSN_MAX)
        if not code:
            return "<unmapped>"
        insn = decode(code, eip)
        return f"{insn.mnemonic} {insn.op_str}".strip() if insn else "<undecodable>"


class Tracers:
    """Several tracers as one (the Host takes a single tracer)."""

    def __init__(self, tracers: list[Tracer]) -> None:
        self.tracers = tracers
        # Hypercalls may be served unseen (in C) only if every tracer just counts them.
        self.only_counts = all(getattr(tracer, "only_counts", False) for tracer in tracers)

    def count_served(self, nr: int, count: int) -> None:
        for tracer in self.tracers:
            tracer.count_served(nr, count)  # type: ignore[attr-defined] (only_counts)

    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None:
        for tracer in self.tracers:
            tracer.hcall(guest, args, queued)

    def trap(self, guest: Guest, exit_: Exit) -> None:
        for tracer in self.tracers:
            tracer.trap(guest, exit_)

    def irq(self, guest: Guest, irq: int) -> None:
        for tracer in self.tracers:
            tracer.irq(guest, irq)
