"""The exact address of a TLB miss, from QEMU itself (exact_fill.c; no lguest
counterpart: a real CPU writes CR2 and lguest's Switcher just saved it).

The Switcher's TLB-fill hook is told only the page that missed; the Guest's page-fault
handler needs the byte.  The pure-Python Host works it out by decoding the faulting
instruction (faultaddr.py).  On the native path the engine's CPU class is made to note
the address QEMU fills for, before Unicorn calls our hooks (calibration.py proves where
the class keeps that function), and a refused miss carries it.
"""

from __future__ import annotations

import ctypes

from lguest.host import native
from lguest.host.calibration import EngineCpu, fill_function_slot


class ExactFills:
    """The exact address of each TLB miss one engine fills (the engine must be in
    Unicorn's virtual-TLB mode)."""

    def __init__(self, cpu: EngineCpu | None) -> None:
        library = native.library()
        self._address = library.lguest_exact_fill_address
        self._address.restype = ctypes.c_uint64
        install = library.lguest_exact_fill_install
        install.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
        install.restype = ctypes.c_bool
        slot = fill_function_slot(cpu) if cpu is not None else None
        original = ctypes.c_void_p.from_address(slot).value if slot is not None else None
        self.installed = slot is not None and install(slot, original)

    def address(self, page: int) -> int | None:
        """The exact address of the miss being filled, if it is known and on `page`."""
        if not self.installed:
            return None
        address = self._address() & 0xFFFFFFFF
        return address if address & ~0xFFF == page else None
