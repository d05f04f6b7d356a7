"""PAE Guests (spec §6 in its PAE form): three-level tables, 64-bit PTEs, NX, SET_PMD,
and a Guest in the other format than it runs as, killed by name."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import lguest, symbol

POWER_OFF = (0, "CRASH: Power down")
PAGE_OFFSET = 0xC0000000

# The prelude's setup_pae_paging maps the first 4 MiB one to one through `pdpt`, `pmd`
# and `pae_pt`, as setup_user_paging does with two levels.
PAE = r"""
	.bss
frames:	.space 4096 * 4
	.text
/* Store a PTE of the first 4 MiB silently: vaddr in %ecx, low half in %edx, high in %esi. */
set_pae_pte:
	pushl %eax
	movl %ecx, %eax
	shrl $12, %eax
	movl %edx, pae_pt(,%eax,8)
	movl %esi, pae_pt + 4(,%eax,8)
	popl %eax
	ret
fail:	SHUTDOWN $failed
failed:	.asciz "check failed"
"""


def run(elf, *options: str):
    return lguest(*options, "32", str(elf))


def killed(elf, *options: str) -> str:
    result = run(elf, *options)
    assert result.status == 1, result.stderr
    return result.reason


# --- the walk's checks (§6.3 step 2, PAE) ---------------------------------------------------

@pytest.mark.parametrize(("entry", "reason"), [
    ("$pmd + 0x3", "bad page directory entry"),  # RW in a PDPT entry: only P is allowed
    ("$0x3000001", "bad page directory entry"),  # a PMD at 48 MiB: beyond 32 MiB of RAM
], ids=["pdpt flags", "pdpt pfn"])
def test_bad_pdpt_entry(asm_guest, entry: str, reason: str) -> None:
    assert killed(asm_guest(PAE + f"""
test_main:
	INIT
	call setup_pae_paging
	movl {entry}, pdpt + 8			/* the second gigabyte */
	HCALL LHCALL_SET_PGD, $pdpt, $1
	movl 0x40000000, %eax
"""), "--pae") == reason


@pytest.mark.parametrize(("low", "high"), [
    ("$pae_pt + 0x0e7", "$0"),  # PSE: no 2 MiB pages
    ("$pae_pt + 0x067", "$0x80000000"),  # NX belongs in PTEs, not in a PMD entry
    ("$0x3000067", "$0"),  # a page table beyond RAM
], ids=["pse", "nx", "pfn"])
def test_bad_pmd_entry(asm_guest, low: str, high: str) -> None:
    assert killed(asm_guest(PAE + f"""
test_main:
	INIT
	call setup_pae_paging
	movl {low}, pmd + 16			/* 4..6 MiB */
	movl {high}, pmd + 20
	HCALL LHCALL_SET_PMD, $pmd, $2
	movl 0x400000, %eax
"""), "--pae") == "bad page middle directory entry"


def test_pte_above_4_gib_is_a_bad_pte(asm_guest) -> None:
    """The high half of a 64-bit PTE is part of its page frame: 4 GiB up is not our RAM."""
    assert killed(asm_guest(PAE + """
test_main:
	INIT
	call setup_pae_paging
	movl $0x300000, %ecx
	movl $0x300067, %edx
	movl $1, %esi
	call set_pae_pte
	HCALL LHCALL_SET_PMD, $pmd, $1
	movl 0x300000, %eax
"""), "--pae") == "bad page table entry"


def test_set_pgd_index_is_below_four(asm_guest) -> None:
    assert killed(asm_guest(PAE + """
test_main:
	INIT
	call setup_pae_paging
	HCALL LHCALL_SET_PGD, $pdpt, $4
"""), "--pae") == "Attempt to set pgd 4/4"


# --- 64-bit PTEs: SET_PTE's high half, NX, A/D ----------------------------------------------

def test_nx_page_reads_but_never_runs(asm_guest) -> None:
    """A PTE with NX (set through SET_PTE's fourth argument) can be read; a fetch from it
    faults with P|I/D (0x11) at the exact address, and the A bit lands in the low half
    without touching the high one."""
    result = run(asm_guest(PAE + """
pf_handler:
	cmpl $0x11, (%esp)
	jne fail
	cmpl $0x300010, lguest_data + LD_CR2
	jne fail
	cmpl $0x80000000, pae_pt + 0x300 * 8 + 4
	jne fail
	testl $0x20, pae_pt + 0x300 * 8		/* ACCESSED, from the read */
	jz fail
	POWEROFF
test_main:
	INIT
	call setup_pae_paging
	GATE 14, pf_handler
	movl $0xc3, frames + 0x10		/* ret */
	movl $0x300000, %ecx
	movl $frames + 0x007, %edx		/* P|RW|US, not yet accessed */
	movl $0x80000000, %esi
	call set_pae_pte
	HCALL LHCALL_SET_PTE, $pdpt, $0x300000, $frames + 0x007, $0x80000000
	cmpl $0xc3, 0x300010
	jne fail
	movl $0x300010, %eax
	call *%eax
	jmp fail
"""), "--pae")
    assert (result.status, result.reason) == POWER_OFF, result.stderr


def test_set_pmd_drops_every_shadow(asm_guest) -> None:
    """A silent PTE change stays stale until SET_PMD makes the Host forget everything."""
    result = run(asm_guest(PAE + """
test_main:
	INIT
	call setup_pae_paging
	movl $0x11111111, frames
	movl $0x22222222, frames + 4096
	movl $0x300000, %ecx
	movl $frames + 0x67, %edx
	xorl %esi, %esi
	call set_pae_pte
	HCALL LHCALL_SET_PTE, $pdpt, $0x300000, $frames + 0x67, $0
	cmpl $0x11111111, 0x300000
	jne fail
	movl $0x300000, %ecx
	movl $frames + 4096 + 0x67, %edx
	xorl %esi, %esi
	call set_pae_pte			/* silently */
	cmpl $0x11111111, 0x300000
	jne fail
	HCALL LHCALL_SET_PMD, $pmd, $1
	cmpl $0x22222222, 0x300000
	jne fail
	POWEROFF
"""), "--pae")
    assert (result.status, result.reason) == POWER_OFF, result.stderr


def test_set_pgd_on_the_pdpt_drops_that_gigabyte(asm_guest) -> None:
    """SET_PGD(pdpt, index) on a PDPT that is only 32-byte aligned: a silent change of
    the second gigabyte stays stale until SET_PGD drops it, and only it."""
    result = run(asm_guest(PAE + """
	.bss
	.p2align 5
	.space 32
pdpt2:	.space 32
	.text
pf_handler:
	cmpl $0x40000000 + frames, lguest_data + LD_CR2
	jne fail
	POWEROFF
test_main:
	INIT
	call setup_pae_paging
	GATE 14, pf_handler
	movl $pmd + 1, pdpt2			/* gigabytes 0 and 1 both map the first 4 MiB */
	movl $pmd + 1, pdpt2 + 8
	HCALL LHCALL_NEW_PGTABLE, $pdpt2
	movl $0x11111111, frames
	cmpl $0x11111111, 0x40000000 + frames
	jne fail
	movl $0, pdpt2 + 8			/* silently */
	cmpl $0x11111111, 0x40000000 + frames
	jne fail
	HCALL LHCALL_SET_PGD, $pdpt2, $1
	cmpl $0x11111111, frames		/* gigabyte 0 is still there */
	jne fail
	movl 0x40000000 + frames, %eax		/* gigabyte 1 is not */
	jmp fail
"""), "--pae")
    assert (result.status, result.reason) == POWER_OFF, result.stderr


def test_guest_cannot_map_the_switcher(asm_guest) -> None:
    """PDPT entry 3, a PMD and a table mapping 0xFFD00000 to a frame of ours: still a fault."""
    result = run(asm_guest(PAE + """
	.bss
	.p2align 12
pmd3:	.space 4096
pt3:	.space 4096
	.text
pf_handler:
	cmpl $0, (%esp)
	jne fail
	cmpl $0xffd00008, lguest_data + LD_CR2
	jne fail
	POWEROFF
test_main:
	INIT
	call setup_pae_paging
	GATE 14, pf_handler
	movl $frames + 0x67, pt3 + 0x100 * 8	/* 0xFFD00000 -> a frame of ours */
	movl $pt3 + 0x67, pmd3 + 510 * 8
	movl $pmd3 + 1, pdpt + 3 * 8
	HCALL LHCALL_SET_PGD, $pdpt, $3
	movl 0xffd00008, %eax
	jmp fail
"""), "--pae")
    assert (result.status, result.reason) == POWER_OFF, result.stderr


# --- the wrong mode, named -----------------------------------------------------------------

def test_pae_tables_in_a_guest_run_as_non_pae(asm_guest) -> None:
    elf = asm_guest(PAE + """
test_main:
	INIT
	call setup_pae_paging
	POWEROFF
""")
    reason = killed(elf)
    pdpt = symbol(elf, "pdpt")
    assert re.fullmatch(rf"PAE page tables in a Guest run as non-PAE \(NEW_PGTABLE {pdpt:#x} maps the "
                        r"running code at 0x[0-9a-f]+ only as PAE\)", reason), reason


def test_two_level_tables_in_a_guest_run_as_pae(asm_guest) -> None:
    elf = asm_guest("""
test_main:
	INIT
	call setup_user_paging
	POWEROFF
""")
    reason = killed(elf, "--pae")
    page_dir = symbol(elf, "page_dir")
    assert re.fullmatch(rf"non-PAE page tables in a Guest run as PAE \(NEW_PGTABLE {page_dir:#x} maps the "
                        r"running code at 0x[0-9a-f]+ only as non-PAE\)", reason), reason


@pytest.mark.parametrize(("options", "address", "reason"), [
    ((), "$pdpt + 0x20", "PAE page tables in a Guest run as non-PAE (NEW_PGTABLE {:#x} is not page aligned)"),
    (("--pae",), "$pdpt + 4", "NEW_PGTABLE {:#x} is not 32-byte aligned"),
], ids=["2level", "pae"])
def test_misaligned_top_level(asm_guest, options, address: str, reason: str) -> None:
    elf = asm_guest(PAE + f"""
test_main:
	INIT
	HCALL LHCALL_NEW_PGTABLE, {address}
	POWEROFF
""")
    offset = 0x20 if not options else 4
    assert killed(elf, *options) == reason.format(symbol(elf, "pdpt") + offset)


@pytest.mark.parametrize("pae", [False, True], ids=["2level", "pae"])
def test_puppy_in_the_other_mode_is_killed_by_name(puppy, pae: bool) -> None:
    """The PAE puppy run as non-PAE, and the non-PAE one run as PAE: never `unhandled trap 14`."""
    build = puppy.parent.parent / ("build-pae" if pae else "build") / "puppy.elf"
    result = lguest("--no-pae" if pae else "--pae", "64", str(build), "procs")
    theirs, ours = ("PAE", "non-PAE") if pae else ("non-PAE", "PAE")
    top = symbol(build, "boot_pgdir") - PAGE_OFFSET
    assert result.status == 1
    assert re.fullmatch(rf"{theirs} page tables in a Guest run as {ours} \(NEW_PGTABLE {top:#x} maps the "
                        rf"running code at 0x[0-9a-f]+ only as {theirs}\)", result.reason), result.reason


# --- the mode, read from the kernel image ---------------------------------------------------

PAE_GUEST = PAE + """
test_main:
	INIT
	call setup_pae_paging
	POWEROFF
"""
# What x86_report_nx() can print, in a PAE build only.
PAE_WORDS = b"NX (Execute Disable) protection: active\n"


def test_mode_read_from_an_elf(asm_guest) -> None:
    """The PAE guest carries a PAE kernel's words: it runs as PAE unless told otherwise."""
    elf = asm_guest(PAE_GUEST + f'\t.section .rodata\n\t.ascii "{PAE_WORDS.decode().strip()}"\n')
    result = run(elf)
    assert (result.status, result.reason) == POWER_OFF, result.stderr
    assert killed(elf, "--no-pae").startswith("PAE page tables in a Guest run as non-PAE (")


PAYLOAD_AT = 0x100000  # far above the guest's code, data and bss (all at 1 MiB, loaded from offset 0)


def bzimage(tmp_path: Path, elf: Path, payload: bytes) -> Path:
    """The guest as a bzImage: its flat image at code32_start, `payload` as the compressed kernel."""
    flat = tmp_path / "flat.bin"
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(flat)], check=True)
    code = flat.read_bytes().ljust(PAYLOAD_AT, b"\0") + payload
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020D)
    struct.pack_into("<I", setup, 0x214, symbol(elf, "start"))
    struct.pack_into("<II", setup, 0x248, PAYLOAD_AT, len(payload))
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(setup) + code)
    return path


KERNEL = b"\x7fELF" + bytes(4000) + PAE_WORDS + bytes(4000)


@pytest.mark.parametrize("compress", [
    lambda data: lzma.compress(data, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    lambda data: lzma.compress(data, lzma.FORMAT_ALONE),
    gzip.compress,
    bz2.compress,
], ids=["xz", "lzma", "gzip", "bzip2"])
def test_mode_read_from_a_bzimage_payload(asm_guest, tmp_path: Path, compress) -> None:
    """The payload is decompressed (the size word the kernel's build appends is ignored)."""
    image = bzimage(tmp_path, asm_guest(PAE_GUEST), compress(KERNEL) + struct.pack("<I", len(KERNEL)))
    result = run(image)
    assert (result.status, result.reason) == POWER_OFF, result.stderr


def test_a_corrupt_payload_says_nothing(asm_guest, tmp_path: Path) -> None:
    """Undecided: the Guest runs as non-PAE, and its PAE tables are named at NEW_PGTABLE."""
    image = bzimage(tmp_path, asm_guest(PAE_GUEST), b"\xfd7zXZ\x00" + b"garbage" * 100)
    assert killed(image).startswith("PAE page tables in a Guest run as non-PAE (")
    result = run(image, "--pae")
    assert (result.status, result.reason) == POWER_OFF, result.stderr
