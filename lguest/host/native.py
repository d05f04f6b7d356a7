"""The Host's C, built on first use (no lguest counterpart: lguest was all C).

Everything in `lguest/host/*.c` (today the doorbell hook, doorbell.c) becomes one
shared library, `_native.so`.  An installed package carries it, built with the
package (setup.py loads this file on its own: it needs only the standard
library); in a source checkout it is compiled here the first time it is needed,
and again whenever a source is newer than the library, like puppy.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "doorbell.c",)
LIBRARY = HERE / "_native.so"


class NativeBuildError(RuntimeError):
    pass


def build(sources: tuple[Path, ...] = SOURCES, target: Path = LIBRARY) -> None:
    result = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(target), *map(str, sources)],
                            capture_output=True, text=True)
    if result.returncode:
        names = ", ".join(source.name for source in sources)
        raise NativeBuildError(f"building {names} failed: {result.stderr.strip()}")


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
