"""The Host's C, built on first use (no lguest counterpart: lguest was all C).

Everything in `lguest/host/*.c` (the doorbell hook, doorbell.c; the fixed port
reads and quiet writes, ports.c; the TLB fills of validated pages, fills.c; the interrupt hook,
trap_hook.c, with the hypercalls and traps it serves, hypercalls.c and
interrupts.c) becomes one shared
library, `_native.so`, and `add_hook` registers its functions as Unicorn hooks.
An installed package carries the library, built with the package (setup.py loads
this file on its own: it needs only the standard library); in a source checkout it
is compiled here the first time it is needed, and again whenever a source is newer
than the library, like puppy.

The native path (the C port reads and TLB fills, and kicks without a hook before
every block) is the default; `--no-native`, or LGUEST_NO_NATIVE=1 in the
environment (for a second test pass), runs the pure-Python Host instead.  The
doorbell hook is C on both paths.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = tuple(sorted(HERE.glob("*.c")))
LIBRARY = HERE / "_native.so"


class NativeBuildError(RuntimeError):
    pass


def enabled() -> bool:
    """The default for every Switcher: native unless LGUEST_NO_NATIVE is set (not 0)."""
    return os.environ.get("LGUEST_NO_NATIVE", "") in ("", "0")


def build(sources: tuple[Path, ...] = SOURCES, target: Path = LIBRARY) -> None:
    # Built aside and renamed: another process may be loading the old one.
    partial = target.with_name(f"{target.name}.{os.getpid()}")
    result = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(partial), *map(str, sources)],
                            capture_output=True, text=True)
    if result.returncode:
        names = ", ".join(source.name for source in sources)
        raise NativeBuildError(f"building {names} failed: {result.stderr.strip()}")
    os.replace(partial, target)


def _stale() -> bool:
    if not LIBRARY.exists():
        return True
    built = LIBRARY.stat().st_mtime
    return any(source.exists() and source.stat().st_mtime > built for source in SOURCES)


_library: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    global _library
    if _library is None:
        if _stale():
            build()
        _library = ctypes.CDLL(str(LIBRARY))
    return _library


def add_hook(uc: object, kind: int, function: str, data: object, begin: int = 1, end: int = 0,
             *extra: object) -> object:
    """Register one of our C functions as a Unicorn hook (by default over all addresses),
    `data` its argument; the handle, for uc_hook_del.  A C hook must be the only one of
    its type: it decides, or calls back into Python itself."""
    from unicorn import UcError  # here, not at the top: setup.py loads this file on its own
    from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

    handle = uc_hook_h()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind,  # type: ignore[attr-defined]
                            ctypes.cast(getattr(library(), function), ctypes.c_void_p),
                            ctypes.byref(data), ctypes.c_uint64(begin), ctypes.c_uint64(end), *extra)
    if err:
        raise UcError(err)
    return handle
