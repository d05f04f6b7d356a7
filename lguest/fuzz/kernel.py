"""The fuzz Guest's kernel image: built from `guest/` with gcc on first use.

Like the Host's doorbell hook, it is compiled the first time it is needed (and
again whenever a source is newer than the image), so a source checkout needs
nothing but gcc and binutils.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from elftools.elf.elffile import ELFFile

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "guest" / "entry.S", HERE / "guest" / "fuzz.c"]
INCLUDED = HERE / "guest" / "lguest_data.S"  # #included by entry.S
IMAGE = HERE / "guest" / "build" / "fuzz.elf"

CFLAGS = ["-m32", "-O2", "-ffreestanding", "-fno-pic", "-no-pie", "-fno-stack-protector", "-fno-builtin",
          "-fno-asynchronous-unwind-tables", "-mgeneral-regs-only", "-nostdlib", "-static", "-Wall",
          "-Wextra", "-Werror"]
LDFLAGS = ["-Wl,-Ttext=0x100000", "-Wl,-e,start", "-Wl,--no-warn-rwx-segments", "-Wl,--build-id=none",
           "-Wl,-z,noseparate-code"]


class GuestBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class FuzzKernel:
    path: Path
    ops_counter: int  # guest-physical address of `fuzz_ops` (linked at its physical address)
    last_op: int  # `fuzz_last_op`: a pointer to the name of the operation under way


def build(target: Path = IMAGE) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")  # workers may race to build: only whole images appear
    result = subprocess.run(["gcc", *CFLAGS, *LDFLAGS, "-o", str(partial), *map(str, SOURCES)],
                            capture_output=True, text=True)
    if result.returncode:
        raise GuestBuildError(f"building the fuzz Guest failed: {result.stderr.strip()}")
    partial.replace(target)


@cache
def fuzz_kernel() -> FuzzKernel:
    if not IMAGE.exists() or max(s.stat().st_mtime for s in (*SOURCES, INCLUDED)) > IMAGE.stat().st_mtime:
        build()
    with IMAGE.open("rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab")
        counter = symbols.get_symbol_by_name("fuzz_ops")[0]["st_value"]
        last_op = symbols.get_symbol_by_name("fuzz_last_op")[0]["st_value"]
    return FuzzKernel(IMAGE, counter, last_op)
