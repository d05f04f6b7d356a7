"""What gdb learns about our CPU: the i386 register set, in gdb's numbering.

The target description is the `org.gnu.gdb.i386.core` feature gdb requires for
i386: the sixteen general and segment registers we serve, then the x87 ones
gdb insists on, which we report as unavailable (the Host does not model the
Guest's FPU state for gdb).
"""

from __future__ import annotations

# gdb's i386 order: the first 16 are what `g` carries.
GENERAL = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
           "cs", "ss", "ds", "es", "fs", "gs")
SEGMENTS = frozenset(GENERAL[10:])
X87 = tuple(f"st{i}" for i in range(8)) + ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg",
                                           "fooff", "fop")
SIZES = [4] * len(GENERAL) + [10] * 8 + [4] * 8  # bytes per register, by gdb number

_EFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
                (19, "VIF"), (20, "VIP"), (21, "ID"))
_TYPES = {"esp": "data_ptr", "ebp": "data_ptr", "eip": "code_ptr", "eflags": "i386_eflags"}


def _reg(name: str, size: int, kind: str) -> str:
    return f'    <reg name="{name}" bitsize="{8 * size}" type="{kind}"/>\n'


def _description() -> str:
    flags = "".join(f'    <field name="{name}" start="{bit}" end="{bit}"/>\n' for bit, name in _EFLAGS_BITS)
    regs = "".join(_reg(name, 4, _TYPES.get(name, "int32")) for name in GENERAL)
    regs += "".join(_reg(name, 10, "i387_ext") for name in X87[:8])
    regs += "".join(_reg(name, 4, "int") for name in X87[8:])
    return ('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
            '  <architecture>i386</architecture>\n  <feature name="org.gnu.gdb.i386.core">\n'
            f'    <flags id="i386_eflags" size="4">\n{flags}    </flags>\n{regs}'
            '  </feature>\n</target>\n')


TARGET_XML = _description().encode()
