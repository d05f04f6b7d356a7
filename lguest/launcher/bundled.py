"""Where the bundled puppy kernel lives, building it from source when needed.

An installed package carries `lguest/guests/puppy.elf`, built when the package
was built.  In a source checkout the kernel is built from `puppy/` with make on
first use, so nobody ever has to build it by hand.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lguest.launcher.boot import LoadError

PACKAGED = Path(__file__).resolve().parent.parent / "guests" / "puppy.elf"
SOURCE = Path(__file__).resolve().parent.parent.parent / "puppy"


def puppy_path() -> Path:
    if PACKAGED.exists():
        return PACKAGED
    if (SOURCE / "Makefile").exists():
        build_puppy(SOURCE)
        return SOURCE / "build" / "puppy.elf"
    raise LoadError("the bundled puppy kernel is missing: reinstall lguest")


def build_puppy(source: Path) -> None:
    """Run puppy's Makefile (quietly, unless it fails)."""
    result = subprocess.run(["make", "-s", "-C", str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        raise LoadError(f"building puppy failed:\n{result.stdout}{result.stderr}".rstrip())
