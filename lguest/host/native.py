"""The Host's one piece of C: the doorbell hook (kick.c), built on first use.

An installed package carries `_kick.so`, built with the package; in a source
checkout it is compiled here the first time it is needed, like puppy.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "kick.c"
LIBRARY = HERE / "_kick.so"


class NativeBuildError(RuntimeError):
    pass


def build(source: Path = SOURCE, target: Path = LIBRARY) -> None:
    result = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(target), str(source)],
                            capture_output=True, text=True)
    if result.returncode:
        raise NativeBuildError(f"building {source.name} failed: {result.stderr.strip()}")


_library: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    global _library
    if _library is None:
        if not LIBRARY.exists() or (SOURCE.exists() and SOURCE.stat().st_mtime > LIBRARY.stat().st_mtime):
            build()
        _library = ctypes.CDLL(str(LIBRARY))
    return _library
