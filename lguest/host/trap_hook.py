"""The native path's interrupt hook, in C (trap_hook.c; no lguest counterpart: on a
real CPU a trap went through the IDT and lguest's Switcher without any hook).

Every exception and `int n` reaches the Host through Unicorn's interrupt hook (an
invalid opcode through its invalid-instruction hook).  On
the native path that hook is C: it serves the hypercalls the Host handed over as
data (hypercalls.c) and the traps the emulated CPU may deliver through the Guest's
gates itself (interrupts.c), and calls the Switcher's Python hook for the rest,
and for everything while the Host has news it cannot see (`ask_python`).

What it owns: the hook's installation in one engine, the pointers to the tables
it consults, and the counts of what it served (--stats).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import UC_HOOK_INSN_INVALID, UC_HOOK_INTR, Uc

from lguest.host import native

IntrHook = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
InvalidHook = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)


class _Hook(ctypes.Structure):
    """struct trap_hook of trap_hook.c."""

    _fields_ = (("python_decides", ctypes.c_int32), ("python", IntrHook), ("python_invalid", InvalidHook),
                ("hcalls", ctypes.c_void_p),
                ("gates", ctypes.c_void_p), ("hypercalls_served", ctypes.c_uint64),
                ("traps_served", ctypes.c_uint64))


class TrapHook:
    """The C interrupt hook of one engine."""

    def __init__(self, uc: Uc, python: Callable[[object, int, object], None],
                 python_invalid: Callable[[object, object], bool]) -> None:
        """`python` and `python_invalid`: the Switcher's interrupt and invalid-opcode
        hooks, for whatever the C ones leave to Python (#UD arrives through the latter),
        called as Unicorn calls a hook: the engine's handle first, the hook's data last."""
        hook = self._hook = _Hook()
        hook.python_decides = 1  # until the Switcher starts emulating
        hook.python = IntrHook(python)
        hook.python_invalid = InvalidHook(python_invalid)
        self._handle = native.add_hook(uc, UC_HOOK_INTR, "lguest_interrupt_hook", hook)
        self._invalid_handle = native.add_hook(uc, UC_HOOK_INSN_INVALID, "lguest_invalid_hook", hook)

    def release(self) -> None:
        """The engine is closed: let go of the Python hooks (no cycle keeps the tables)."""
        self._hook.python = IntrHook()
        self._hook.python_invalid = InvalidHook()

    @property
    def python_decides_address(self) -> int:
        """Where the "Host has news" word is, for other C that must respect it (irqs.c)."""
        return ctypes.addressof(self._hook) + _Hook.python_decides.offset

    def ask_python(self, ask: bool) -> None:
        """Send every trap to the Python hook (True), or only those no table serves."""
        self._hook.python_decides = ask

    def serve_hypercalls(self, table: ctypes.Structure | None) -> None:
        """Let hypercalls.c serve hypercalls from `table` (None: none; keep it alive)."""
        self._hook.hcalls = ctypes.addressof(table) if table is not None else None

    def serve_traps(self, table: ctypes.Structure | None) -> None:
        """Let interrupts.c deliver traps from `table` (None: none; keep it alive)."""
        self._hook.gates = ctypes.addressof(table) if table is not None else None

    @property
    def hypercalls_served(self) -> int:
        return self._hook.hypercalls_served

    @property
    def traps_served(self) -> int:
        return self._hook.traps_served
