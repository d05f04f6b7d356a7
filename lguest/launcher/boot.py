"""The Launcher's loader: Guest RAM, the kernel image, the initrd and `boot_params` (spec §3.1–3.3).

Guest RAM is one anonymous shared mapping of `ram_size` bytes plus the 1 MiB gap above it that
is mapped but is not RAM (§3.1).  The Launcher fills it in this order:

1. `load_kernel`: an i386 ELF `vmlinux` (each PT_LOAD at its physical address) or a
   bzImage (everything after the real-mode setup, at gpa 0x100000);
2. `load_initrd` (optional): the file at the page-aligned top of RAM;
3. `write_boot_params`: the zero page at gpa 0 and the command line at gpa 0x1000.

Every problem a user can cause (missing file, wrong file, too little or too much memory,
a command line that is too long) raises `LoadError`, whose text is one line meant to be
printed as `lguest: <msg>`.  Misuse of the API by the Launcher itself raises `ValueError`.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import (
    ENUM_E_MACHINE,
    ENUM_E_TYPE,
    ENUM_EI_CLASS,
    ENUM_EI_DATA,
    ENUM_P_TYPE_BASE,
)

from lguest import abi
from lguest.launcher.paging_mode import image_is_pae

MIB = 1 << 20
# The mapped-but-not-RAM pages just above the top of RAM (§3.1).
GAP_SIZE = abi.DEVICE_PAGES * abi.PAGE_SIZE
MIN_GUEST_MEM = abi.MIN_GUEST_MEM_MIB * MIB
MAX_GUEST_MEM = abi.MAX_GUEST_MEM_MIB * MIB
# boot_params and the command line live here; nothing may be loaded over them.
BOOT_AREA_END = abi.CMDLINE_GPA + abi.COMMAND_LINE_SIZE
# The longest command line the Guest keeps whole: its buffer also holds the NUL.
MAX_CMDLINE_BYTES = abi.COMMAND_LINE_SIZE - 1
# Enough of a bzImage's first sectors to hold every setup-header field we read.
_BZIMAGE_HEADER_BYTES = abi.BootParams.CODE32_START + 4

assert MAX_GUEST_MEM + GAP_SIZE < abi.SWITCHER_ADDR

MSG_MALFORMED_ELF = "Malformed elf header"
MSG_NOT_BZIMAGE = "This doesn't look like a bzImage to me"


class LoadError(Exception):
    """A problem with the user's kernel, initrd, memory size or command line (one line)."""


@dataclass(frozen=True)
class KernelImage:
    """What `load_kernel` put in Guest RAM."""

    entry: int  # the Guest's first eip: ELF e_entry or the bzImage's code32_start
    kind: str  # "elf" or "bzImage"
    # (gpa, size) of every range loaded, in file order, for --verbose and overlap checks.
    sections: tuple[tuple[int, int], ...] = ()
    payload: tuple[int, int] | None = None  # a bzImage's compressed kernel in RAM: (gpa, length)

    def is_pae(self, ram: mmap.mmap) -> bool | None:
        """Whether the kernel says it is a PAE build (None: it does not say)."""
        return image_is_pae(ram, self.sections, self.payload)


def page_align(n: int) -> int:
    """Round `n` up to a whole number of pages."""
    return (n + abi.PAGE_SIZE - 1) & ~(abi.PAGE_SIZE - 1)


def _size_str(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def check_guest_mem(ram_size: int) -> None:
    """Refuse a Guest memory size the Launcher cannot honour."""
    if ram_size <= 0 or ram_size % abi.PAGE_SIZE:
        raise ValueError(f"guest memory size {ram_size:#x} is not a positive multiple of the page size")
    if ram_size < MIN_GUEST_MEM:
        raise LoadError(
            f"{_size_str(ram_size)} of guest memory is too small: "
            f"at least {abi.MIN_GUEST_MEM_MIB} MiB is needed"
        )
    if ram_size > MAX_GUEST_MEM:
        raise LoadError(
            f"{_size_str(ram_size)} of guest memory is too large: at most {abi.MAX_GUEST_MEM_MIB} MiB fits "
            f"below the Switcher at {abi.SWITCHER_ADDR:#x}"
        )


def _check_ram(ram: mmap.mmap, ram_size: int) -> None:
    check_guest_mem(ram_size)
    if len(ram) < ram_size + GAP_SIZE:
        raise ValueError(f"guest RAM mapping of {len(ram):#x} bytes is smaller than {ram_size + GAP_SIZE:#x}")


# tour:L.40 Guest RAM
# lguest made no copy of the Guest's memory anywhere: the Launcher mapped a region of its
# own address space and that region *was* Guest-physical memory, so a Guest-physical
# address was just an offset into it.  We keep that: Guest RAM is one shared anonymous
# mapping, handed to the emulator as the Guest's physical memory, read and written by the
# Host (page tables, hypercall arguments), and sliced by the device threads, so a disk
# read lands straight in the Guest's buffer.  Above the top of RAM the original kept a
# 1 MiB gap (once a page of device descriptors); the devices' MMIO windows start above
# it.  The Switcher's top 4 MiB of the address space stays clear of all of it.
def allocate_guest_ram(ram_size: int) -> mmap.mmap:
    """Map `ram_size` bytes of zeroed Guest RAM plus the 1 MiB not-RAM gap above it."""
    check_guest_mem(ram_size)
    size = ram_size + GAP_SIZE
    try:
        # Anonymous and shared: the emulator, the Host and device workers all see the same pages.
        return mmap.mmap(-1, size)
    except (OSError, OverflowError) as e:
        raise LoadError(f"Mmapping {size // abi.PAGE_SIZE} pages of guest memory: {e}") from e


def _open_regular(path: str) -> io.BufferedReader:
    """Open a regular file for reading; anything else is `Failed to open`."""
    try:
        # O_NONBLOCK so that a FIFO given by mistake cannot hang us before the check below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LoadError(f"Failed to open {path}: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LoadError(f"Failed to open {path}: not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_into(f: io.BufferedReader, ram: mmap.mmap, gpa: int, offset: int, length: int, what: str) -> None:
    """Copy `length` bytes at file `offset` straight into Guest RAM at `gpa`."""
    try:
        f.seek(offset)
        with memoryview(ram) as mv, mv[gpa : gpa + length] as dst:
            got = f.readinto(dst)
    except OSError as e:
        raise LoadError(f"Reading {what}: {e.strerror or e}") from e
    if got != length:
        raise LoadError(f"Reading offset {offset} len {length} gave {got}: {what} is truncated")


def _read_head(f: io.BufferedReader, n: int, what: str) -> bytes:
    try:
        return f.read(n)
    except OSError as e:
        raise LoadError(f"Reading {what}: {e.strerror or e}") from e


def _check_entry(entry: int, ram_size: int) -> None:
    # The Guest starts in linear mode (§6.2), where only guest-physical RAM is mapped.
    if not 0 <= entry < ram_size:
        raise LoadError(
            f"Kernel entry point {entry:#x} is outside guest RAM (0-{ram_size:#x}): "
            "it must be a physical address"
        )


# tour:L.50 Loading the kernel: ELF or bzImage
# A boot loader's job, minus the real mode.  An ELF vmlinux is loaded segment by segment
# at each segment's *physical* address, and the Guest starts at `e_entry`, which for an
# i386 vmlinux is the physical address of startup_32: the Host starts the Guest in
# "linear mode", where every address maps to the same physical one, until the Guest
# gives it page tables (§6.2).  A bzImage is a real-mode setup program followed by a
# self-decompressing kernel: we skip the setup sectors (a Guest never runs in real mode),
# copy the rest to 1 MiB and start at its 32-bit entry, `code32_start`.  Everything a user
# can get wrong here is a LoadError: one line and exit status 2.
def load_kernel(ram: mmap.mmap, ram_size: int, path: str) -> KernelImage:
    """Load an ELF vmlinux or a bzImage from `path` into Guest RAM (§3.2)."""
    _check_ram(ram, ram_size)
    with _open_regular(path) as f:
        head = _read_head(f, abi.ELF_EHDR_SIZE_32, f"kernel {path}")
        if head.startswith(abi.ELF_MAGIC):
            return _load_elf(f, ram, ram_size, path, head)
        return _load_bzimage(f, ram, ram_size, path)


def _enum_value(value: str | int, table: dict[str, int]) -> int:
    """pyelftools reports known enum values by name: turn them back into numbers (-1: not in table)."""
    return value if isinstance(value, int) else table.get(value, -1)


def _load_elf(f: io.BufferedReader, ram: mmap.mmap, ram_size: int, path: str, head: bytes) -> KernelImage:
    if len(head) < abi.ELF_EHDR_SIZE_32:
        raise LoadError(MSG_MALFORMED_ELF)
    try:
        elf = ELFFile(f)
        ident = elf["e_ident"]
        good = (
            _enum_value(ident["EI_CLASS"], ENUM_EI_CLASS) == abi.ELFCLASS32
            and _enum_value(ident["EI_DATA"], ENUM_EI_DATA) == abi.ELFDATA2LSB
            and _enum_value(elf["e_type"], ENUM_E_TYPE) == abi.ET_EXEC
            and _enum_value(elf["e_machine"], ENUM_E_MACHINE) == abi.EM_386
            and elf["e_phentsize"] == abi.ELF_PHENTSIZE_32
            and 1 <= elf["e_phnum"] <= abi.ELF_MAX_PHNUM
        )
    except (ELFError, ValueError) as e:
        raise LoadError(MSG_MALFORMED_ELF) from e
    if not good:
        raise LoadError(MSG_MALFORMED_ELF)

    sections: list[tuple[int, int]] = []
    for i in range(elf["e_phnum"]):
        try:
            ph = elf.get_segment(i).header
            is_load = _enum_value(ph["p_type"], ENUM_P_TYPE_BASE) == abi.PT_LOAD
        except (ELFError, ValueError) as e:
            raise LoadError(f"{MSG_MALFORMED_ELF}: program header {i} lies outside the file") from e
        if not is_load:
            continue
        paddr, filesz, memsz, offset = ph["p_paddr"], ph["p_filesz"], ph["p_memsz"], ph["p_offset"]
        if filesz > memsz:
            raise LoadError(f"Malformed elf segment {i}: file size {filesz:#x} > memory size {memsz:#x}")
        if memsz == 0:
            continue
        end = paddr + memsz
        if end > ram_size:
            raise LoadError(
                f"Kernel segment {i} at gpa {paddr:#x}-{end:#x} does not fit in "
                f"{_size_str(ram_size)} of guest RAM (gpa 0-{ram_size:#x})"
            )
        if paddr < BOOT_AREA_END:
            raise LoadError(
                f"Kernel segment {i} at gpa {paddr:#x}-{end:#x} overlaps the boot_params and "
                f"command line area (gpa 0-{BOOT_AREA_END:#x})"
            )
        # No BSS clearing: fresh Guest RAM is already zero.
        _read_into(f, ram, paddr, offset, filesz, f"kernel {path}")
        sections.append((paddr, memsz))
    if not sections:
        raise LoadError(f"Kernel {path} has no loadable (PT_LOAD) segments")
    _check_entry(elf["e_entry"], ram_size)
    return KernelImage(entry=elf["e_entry"], kind="elf", sections=tuple(sections))


def _load_bzimage(f: io.BufferedReader, ram: mmap.mmap, ram_size: int, path: str) -> KernelImage:
    f.seek(0)
    hdr = _read_head(f, _BZIMAGE_HEADER_BYTES, f"kernel {path}")
    magic_at = abi.BZIMAGE_MAGIC_OFFSET
    if len(hdr) < _BZIMAGE_HEADER_BYTES or hdr[magic_at : magic_at + 4] != abi.BZIMAGE_MAGIC:
        raise LoadError(MSG_NOT_BZIMAGE)
    setup_sects = hdr[abi.BootParams.SETUP_SECTS] or abi.SETUP_SECTS_DEFAULT
    offset = (setup_sects + 1) * abi.SETUP_SECTOR_SIZE
    size = os.fstat(f.fileno()).st_size - offset
    if size <= 0:
        raise LoadError(f"{MSG_NOT_BZIMAGE}: {path} ends inside its {setup_sects} setup sectors")
    # The decompressor runs at max(ALIGN(0x100000, kernel_alignment), LOAD_PHYSICAL_ADDR) >= 16 MiB.
    if ram_size <= abi.KERNEL_ALIGNMENT:
        raise LoadError(
            f"A bzImage needs more than {_size_str(abi.KERNEL_ALIGNMENT)} of guest RAM "
            f"(it decompresses itself at {_size_str(abi.KERNEL_ALIGNMENT)}); "
            f"{_size_str(ram_size)} is too small"
        )
    gpa = abi.BZIMAGE_LOAD_GPA
    if gpa + size > ram_size:
        raise LoadError(
            f"bzImage kernel ({size} bytes at gpa {gpa:#x}) does not fit in "
            f"{_size_str(ram_size)} of guest RAM"
        )
    _read_into(f, ram, gpa, offset, size, f"kernel {path}")
    entry = abi.u32(hdr, abi.BootParams.CODE32_START)
    _check_entry(entry, ram_size)
    return KernelImage(entry=entry, kind="bzImage", sections=((gpa, size),),
                       payload=_payload(f, hdr, gpa, size))


def _payload(f: io.BufferedReader, hdr: bytes, gpa: int, size: int) -> tuple[int, int] | None:
    """Where a bzImage's compressed kernel landed (protocol 2.08+), if it lies inside the image."""
    if struct.unpack_from("<H", hdr, abi.BootParams.HDR_VERSION)[0] < abi.BZIMAGE_PAYLOAD_VERSION:
        return None
    f.seek(abi.BootParams.PAYLOAD_OFFSET)
    fields = _read_head(f, 8, "bzImage header")
    if len(fields) < 8:
        return None
    offset, length = struct.unpack("<II", fields)
    return (gpa + offset, length) if offset + length <= size else None


def load_initrd(ram: mmap.mmap, ram_size: int, path: str,
                kernel: KernelImage | None = None) -> tuple[int, int]:
    """Put the initrd at the page-aligned top of RAM; return its (gpa, page-rounded size).

    Pass the loaded `kernel` so an initrd that would land on top of it is refused.
    """
    _check_ram(ram, ram_size)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise LoadError(f"Initrd {path} is empty")
        rounded = page_align(size)
        gpa = ram_size - rounded
        if gpa < BOOT_AREA_END:
            raise LoadError(f"Initrd {path} ({size} bytes) does not fit in "
                            f"{_size_str(ram_size)} of guest RAM")
        for kgpa, ksize in kernel.sections if kernel else ():
            if kgpa < ram_size and gpa < kgpa + ksize:
                raise LoadError(
                    f"Initrd {path} at gpa {gpa:#x}-{ram_size:#x} would overlap the kernel at gpa "
                    f"{kgpa:#x}-{kgpa + ksize:#x}: give the guest more memory"
                )
        _read_into(f, ram, gpa, 0, size, f"initrd {path}")
    # The page-rounded tail is part of the ramdisk the Guest sees: keep it zero.
    ram[gpa + size : ram_size] = bytes(ram_size - gpa - size)
    return gpa, rounded


def encode_cmdline(cmdline: str) -> bytes:
    """The command line as the Guest will see it (argv bytes survive via surrogateescape)."""
    try:
        raw = os.fsencode(cmdline)
    except UnicodeEncodeError as e:
        raise LoadError(f"Kernel command line cannot be encoded: {e.reason}") from e
    if b"\0" in raw:
        raise LoadError("Kernel command line contains a NUL character")
    if len(raw) > MAX_CMDLINE_BYTES:
        raise LoadError(
            f"Kernel command line is too long: {len(raw)} bytes, the limit is {MAX_CMDLINE_BYTES}"
        )
    return raw


# tour:L.60 boot_params: how Linux learns it is a Guest
# The first page of Guest RAM is the `boot_params` structure a PC boot loader leaves for
# Linux, and the command line follows it.  One memory region (e820), the command line's
# address, and one field that changes everything: `hardware_subarch = 1`, lguest.  Linux's
# startup_32 reads it and jumps to lguest_entry instead of setting up a PC, and from there
# the Guest speaks to the Host in hypercalls (chapter G).  KEEP_SEGMENTS tells a bzImage's
# decompressor not to reload segment registers, which it cannot do at privilege ring 1.
def write_boot_params(ram: mmap.mmap, ram_size: int, cmdline: str, initrd: tuple[int, int] | None) -> None:
    """Write `boot_params` at gpa 0 and the command line at gpa 0x1000 (§3.3)."""
    _check_ram(ram, ram_size)
    raw = encode_cmdline(cmdline)
    bp = abi.BootParams
    page = bytearray(abi.BOOT_PARAMS_SIZE)
    struct.pack_into("<H", page, bp.APM_BIOS_VERSION, 0)  # 0 keeps the Guest's APM driver away
    struct.pack_into("<Q", page, bp.TBOOT_ADDR, 0)
    struct.pack_into("<B", page, bp.E820_ENTRIES, 1)
    struct.pack_into(abi.E820_ENTRY_FORMAT, page, bp.E820_MAP, 0, ram_size, abi.E820_RAM)
    # 2.07 is the first boot protocol with hardware_subarch, which sends Linux to lguest_entry.
    struct.pack_into("<H", page, bp.HDR_VERSION, abi.BOOT_PROTOCOL_VERSION)
    # KEEP_SEGMENTS: the decompressor must not reload segments, which would fault at ring 1.
    page[bp.LOADFLAGS] |= abi.KEEP_SEGMENTS
    struct.pack_into("<I", page, bp.CMD_LINE_PTR, abi.CMDLINE_GPA)
    struct.pack_into("<I", page, bp.KERNEL_ALIGNMENT, abi.KERNEL_ALIGNMENT)
    struct.pack_into("<I", page, bp.HARDWARE_SUBARCH, abi.X86_SUBARCH_LGUEST)
    if initrd is not None:
        gpa, size = initrd
        if size <= 0 or gpa < BOOT_AREA_END or gpa + size > ram_size:
            raise ValueError(f"initrd range {gpa:#x}+{size:#x} is not inside guest RAM")
        struct.pack_into("<B", page, bp.TYPE_OF_LOADER, abi.LOADER_TYPE_UNKNOWN)
        struct.pack_into("<I", page, bp.RAMDISK_IMAGE, gpa)
        struct.pack_into("<I", page, bp.RAMDISK_SIZE, size)
    ram[abi.BOOT_PARAMS_GPA : abi.BOOT_PARAMS_GPA + abi.BOOT_PARAMS_SIZE] = page
    # The Guest copies the whole COMMAND_LINE_SIZE buffer, so clear all of it, not just our bytes.
    area = bytearray(abi.COMMAND_LINE_SIZE)
    area[: len(raw)] = raw
    ram[abi.CMDLINE_GPA : BOOT_AREA_END] = area
