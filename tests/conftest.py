"""Shared fixtures: build puppy once, assemble test guests, run the `lguest` command."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = Path(__file__).resolve().parent / "guests"
ASM_INCLUDE = ROOT / "lguest" / "fuzz" / "guest"  # lguest_data.S, shared with the fuzz Guest
RUN_TIMEOUT = 120  # seconds: a hang guard, not a performance check


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str

    @property
    def reason(self) -> str:
        """The Launcher's last `lguest: ...` line."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("lguest: ")]
        return lines[-1].removeprefix("lguest: ") if lines else ""


def lguest(*args: str, stdin: str | None = None) -> Run:
    proc = subprocess.run([sys.executable, "-m", "lguest.launcher.main", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, input=stdin or "", cwd=ROOT)  # never our terminal
    assert "Traceback" not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def puppy() -> Path:
    """puppy in both page-table formats; the path is the non-PAE one (`lguest run` boots it)."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "puppy")], check=True)
    subprocess.run(["make", "-s", "-C", str(ROOT / "puppy"), "PAE=1"], check=True)
    return ROOT / "puppy" / "build" / "puppy.elf"


@pytest.fixture(params=[False, True], ids=["2level", "pae"])
def pae(request) -> bool:
    """Run the test in each page-table format (with `lguest run`, its puppy build)."""
    return request.param


def mode(pae: bool) -> tuple[str, ...]:
    """The option that picks the format (non-PAE is the default)."""
    return ("--pae",) if pae else ()


@pytest.fixture
def asm_guest(tmp_path: Path) -> Callable[[str], Path]:
    """Assemble a test guest: the prelude, then `source` (which defines test_main)."""
    counter = iter(range(1000))

    def build(source: str) -> Path:
        n = next(counter)
        src = tmp_path / f"guest{n}.S"
        src.write_text((GUESTS / "prelude.S").read_text() + "\n\t.text\n" + source + "\n")
        obj, elf = tmp_path / f"guest{n}.o", tmp_path / f"guest{n}.elf"
        subprocess.run(["gcc", "-m32", "-c", f"-I{ASM_INCLUDE}", "-o", str(obj), str(src)], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "start", "--no-warn-rwx-segments",
                        "-o", str(elf), str(obj)], check=True)
        return elf

    return build


def symbol(elf: Path, name: str) -> int:
    """The address of a symbol in a test guest."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return table.get_symbol_by_name(name)[0]["st_value"]


GUEST_MEM = 32 << 20


def make_guest(elf: Path, **options):
    """A Guest built in-process from a test ELF, for tests that drive the Host API."""
    from lguest.launcher.machine import build_machine
    from lguest.launcher.options import Options

    opts = Options(mem_mib=GUEST_MEM >> 20, kernel=str(elf), **options)
    return build_machine(opts, str(elf), output=lambda data: None).guest


def run_both_ways(elf: Path, **options):
    """The Guest run to its power-off on each path: (native, pure Python)."""
    guests = []
    for native in (True, False):
        guest = make_guest(elf, native=native, **options)
        assert guest.run().reason == "CRASH: Power down"
        guests.append(guest)
    return tuple(guests)


def run_while_rung(guest):
    """Run a Guest while another thread rings its doorbell as often as the GIL allows
    (raw cross-thread emu_stop fails the tests that use this reliably): its RunResult,
    and how many times the bell rang."""
    done = threading.Event()
    rings = 0

    def ring() -> None:
        nonlocal rings
        while not done.is_set():
            guest.doorbell.ring()
            rings += 1
            time.sleep(0)

    thread = threading.Thread(target=ring)
    thread.start()
    try:
        return guest.run(), rings
    finally:
        done.set()
        thread.join()
