"""Where the bundled puppy kernel lives, building it from source when needed.

An installed package carries `lguest/guests/puppy.elf` and its PAE build
`puppy-pae.elf`, built when the package was built.  In a source checkout the
kernel is built from `puppy/` with make on first use (`make PAE=1` into
`build-pae/` for the PAE one), so nobody ever has to build it by hand.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lguest.launcher.boot import LoadError

GUESTS = Path(__file__).resolve().parent.parent / "guests"
SOURCE = Path(__file__).resolve().parent.parent.parent / "puppy"


def packaged_name(pae: bool) -> str:
    return "puppy-pae.elf" if pae else "puppy.elf"


def build_dir(pae: bool) -> str:
    """Where `make` leaves each build, inside puppy/."""
    return "build-pae" if pae else "build"


def puppy_path(pae: bool = False) -> Path:
    packaged = GUESTS / packaged_name(pae)
    if packaged.exists():
        return packaged
    if (SOURCE / "Makefile").exists():
        build_puppy(SOURCE, pae)
        return SOURCE / build_dir(pae) / "puppy.elf"
    raise LoadError("the bundled puppy kernel is missing: reinstall lguest")


def build_puppy(source: Path, pae: bool = False) -> None:
    """Run puppy's Makefile (quietly, unless it fails)."""
    command = ["make", "-s", "-C", str(source)] + (["PAE=1"] if pae else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LoadError(f"building puppy failed:\n{result.stdout}{result.stderr}".rstrip())
