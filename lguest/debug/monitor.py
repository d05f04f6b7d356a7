"""`monitor` commands: lguest's own state, as only its Host knows it.

Each command returns the text gdb prints.  They run on the vCPU thread while the
Guest is stopped, and only read (`break` changes the stub's own stop rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lguest import abi
from lguest.abi import LguestData
from lguest.debug.census import TRAP_NAMES, Census, hcall_name
from lguest.host.core import Guest
from lguest.host.interrupts import GATE_PRESENT, gate_dpl, gate_type

if TYPE_CHECKING:
    from lguest.debug.gdbstub import GdbStub

HELP = """\
lguest monitor commands:
  hcalls               hypercalls so far, by name
  traps                traps that came back to the Host so far, by vector
  idt                  the Guest's interrupt gates
  gdt                  the Guest's GDT entries
  pgdir                the cached shadow page tables (at most four)
  irqs                 pending, blocked and enabled interrupts
  break hcall <n>      stop after the Guest makes hypercall <n> (number or name)
  break trap <n>       stop when the Guest takes trap <n> (at its handler)
  break                list these; `break clear` forgets them
"""


def run(command: str, guest: Guest, stub: GdbStub) -> str:
    words = command.split()
    if not words or words[0] == "help":
        return HELP
    simple = {"hcalls": lambda: hcalls(guest, stub.census), "traps": lambda: traps(stub.census),
              "idt": lambda: idt(guest), "gdt": lambda: gdt(guest), "pgdir": lambda: pgdir(guest),
              "irqs": lambda: irqs(guest)}
    if words[0] in simple and len(words) == 1:
        return simple[words[0]]()
    if words[0] == "break":
        return breaks(words[1:], stub)
    return f"unknown monitor command '{command}'; try 'monitor help'\n"


def hcalls(guest: Guest, census: Census) -> str:
    lines = [f"{name:<16} {count}" for name, count in census.hcalls.most_common()]
    return "\n".join([f"{guest.stats['hypercalls']} hypercalls", *lines]) + "\n"


def traps(census: Census) -> str:
    lines = [f"{n:3} {TRAP_NAMES.get(n, 'int'):<5} {count}" for n, count in sorted(census.traps.items())]
    return "\n".join([f"{census.exits['page fault']} page faults refused by the Host", *lines]) + "\n"


def idt(guest: Guest) -> str:
    lines = []
    for vector, (lo, hi) in enumerate(guest.idt.entries):
        if hi & GATE_PRESENT:
            handler = (hi & 0xFFFF0000) | (lo & 0xFFFF)
            kind = "interrupt" if gate_type(hi) == abi.GATE_INTERRUPT else "trap"
            lines.append(f"{vector:#04x} {kind:<9} dpl {gate_dpl(hi)} handler {handler:#010x}")
    return "\n".join(lines or ["no gates loaded"]) + "\n"


def gdt(guest: Guest) -> str:
    lines = []
    for num, (lo, hi) in enumerate(guest.segments.gdt):
        if hi or lo:
            base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
            limit = (lo & 0xFFFF) | (hi & 0xF0000)
            if hi & 0x800000:
                limit = limit << 12 | 0xFFF
            access = (hi >> 8) & 0xFF
            lines.append(f"{num:2} sel {num * 8:#06x} base {base:#010x} limit {limit:#010x}"
                         f" access {access:#04x} dpl {access >> 5 & 3}")
    return "\n".join(lines) + "\n"


def pgdir(guest: Guest) -> str:
    pages = guest.pages
    pages.catch_up()  # C may have switched spaces
    if pages.linear:
        return "linear mode: no page tables yet (virtual = physical)\n"
    lines = [f"{'*' if s is pages.current else ' '} pgdir {s.pgdir:#010x}: {len(s.ptes)} shadowed pages"
             for s in pages.shadows]
    return "\n".join(lines) + "\n"


def irqs(guest: Guest) -> str:
    text = f"pending {guest.irqs_pending:#010x}\nhalted {guest.halted}\n"
    base = guest.lguest_data
    if base is None or not guest.memory.ok(base, LguestData.SIZE):
        return text + "no lguest_data yet\n"
    blocked = guest.memory.read_u32(base + LguestData.BLOCKED_INTERRUPTS)
    enabled = guest.memory.read_u32(base + LguestData.IRQ_ENABLED)
    return text + f"blocked {blocked:#010x}\nirq_enabled {enabled:#x}\n"


def breaks(words: list[str], stub: GdbStub) -> str:
    if words == ["clear"]:
        stub.break_hcalls.clear()
        stub.break_traps.clear()
    elif len(words) == 2 and words[0] in ("hcall", "trap"):
        number = _number(words[1], words[0] == "hcall")
        if number is None:
            return f"bad {words[0]} '{words[1]}'\n"
        (stub.break_hcalls if words[0] == "hcall" else stub.break_traps).add(number)
    elif words:
        return "usage: monitor break [hcall <n> | trap <n> | clear]\n"
    shown = [f"hcall {hcall_name(n)} ({n})" for n in sorted(stub.break_hcalls)]
    shown += [f"trap {n}" for n in sorted(stub.break_traps)]
    return "stopping at: " + (", ".join(shown) or "nothing") + "\n"


def _number(word: str, hcall: bool) -> int | None:
    if hcall and word.upper() in abi.Hcall.__members__:
        return int(abi.Hcall[word.upper()])
    try:
        n = int(word, 0)
    except ValueError:
        return None
    return n if 0 <= n < abi.IDT_ENTRIES or hcall else None
