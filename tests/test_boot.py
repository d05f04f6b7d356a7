"""The Launcher's loader (spec §3.1–3.3): real ELF kernels built with binutils, synthetic bzImages."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
from pathlib import Path

import pytest

from lguest.launcher.boot import (
    GAP_SIZE,
    KernelImage,
    LoadError,
    allocate_guest_ram,
    check_guest_mem,
    load_initrd,
    load_kernel,
    page_align,
    write_boot_params,
)

MIB = 1 << 20
PAGE = 4096


# A tiny "kernel": recognisable bytes in .text and .data, and a .bss that is not in the file.
KERNEL_ASM = """\
    .text
    .globl _start
_start:
    movl $0x12345678, %eax
    .ascii "TEXTMARK"
    jmp _start
    .data
    .ascii "DATAMARK"
    .long 0xdeadbeef
    .bss
    .space {bss}
"""

# Linked like an i386 vmlinux: virtual addresses at 0xC0000000 + physical, entry physical.
HIGH_LDS = """\
ENTRY({entry})
SECTIONS {{
  . = 0xC0000000 + {phys:#x};
  .text : AT(ADDR(.text) - 0xC0000000) {{ *(.text) }}
  . = ALIGN(0x1000);
  .data : AT(ADDR(.data) - 0xC0000000) {{ *(.data) }}
  .bss : AT(ADDR(.bss) - 0xC0000000) {{ *(.bss) }}
  /DISCARD/ : {{ *(.note*) *(.comment) }}
}}
phys_start = _start - 0xC0000000;
"""


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def build_elf(
    tmp_path: Path,
    *,
    phys: int = 0x100000,
    bss: int = 0x3000,
    entry: str = "phys_start",
    name: str = "vmlinux",
) -> Path:
    """Assemble and link an i386 ET_EXEC whose segments load at physical address `phys`."""
    src, obj, lds, out = (tmp_path / f"{name}{ext}" for ext in (".S", ".o", ".lds", ""))
    src.write_text(KERNEL_ASM.format(bss=bss))
    lds.write_text(HIGH_LDS.format(phys=phys, entry=entry))
    _run("as", "--32", "-o", obj, src)
    _run("ld", "-m", "elf_i386", "-z", "noexecstack", "--build-id=none", "-T", lds, "-o", out, obj)
    return out


def build_flat_elf(tmp_path: Path, text: int, data: int, name: str = "flat") -> Path:
    """Same kernel linked with -Ttext/--section-start: virtual == physical."""
    src, obj, out = tmp_path / f"{name}.S", tmp_path / f"{name}.o", tmp_path / name
    src.write_text(KERNEL_ASM.format(bss=0x100))
    _run("as", "--32", "-o", obj, src)
    _run(
        "ld", "-m", "elf_i386", "-z", "noexecstack", "--build-id=none", "-e", "_start",
        f"-Ttext={text:#x}", f"--section-start=.data={data:#x}", "-o", out, obj,
    )  # fmt: skip
    return out


def program_headers(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(p_type, p_offset, p_paddr, p_filesz, p_memsz) read by hand, independently of the loader."""
    phoff = struct.unpack_from("<I", data, 28)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    result = []
    for i in range(phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<6I", data, phoff + i * phentsize
        )
        result.append((p_type, p_offset, p_paddr, p_filesz, p_memsz))
    return result


@pytest.fixture
def ram32() -> mmap.mmap:
    ram = allocate_guest_ram(32 * MIB)
    yield ram
    ram.close()


def message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# --- Guest RAM -------------------------------------------------------------------------------


def test_allocate_guest_ram_has_the_gap_and_is_zero() -> None:
    ram = allocate_guest_ram(4 * MIB)
    try:
        assert len(ram) == 4 * MIB + 256 * PAGE
        assert GAP_SIZE == MIB
        assert ram[:] == bytes(len(ram))
        ram[len(ram) - 1] = 0x5A  # the gap is mapped and writable
        assert ram[len(ram) - 1] == 0x5A
    finally:
        ram.close()


def test_guest_ram_is_shared_with_a_child_process() -> None:
    ram = allocate_guest_ram(2 * MIB)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ram[0x1234] = 0x77
            os._exit(0)
        os.waitpid(pid, 0)
        assert ram[0x1234] == 0x77
    finally:
        ram.close()


@pytest.mark.parametrize("mib", [2, 64, 3072])
def test_memory_sizes_accepted(mib: int) -> None:
    check_guest_mem(mib * MIB)


def test_memory_too_small() -> None:
    with pytest.raises(LoadError) as e:
        allocate_guest_ram(1 * MIB)
    assert message(e) == "1 MiB of guest memory is too small: at least 2 MiB is needed"


def test_memory_too_large() -> None:
    with pytest.raises(LoadError) as e:
        allocate_guest_ram(3073 * MIB)
    assert message(e) == (
        "3073 MiB of guest memory is too large: at most 3072 MiB fits below the Switcher at 0xffc00000"
    )


@pytest.mark.parametrize("mem", [0, -PAGE, 2 * MIB + 1])
def test_memory_not_whole_pages_is_a_programming_error(mem: int) -> None:
    with pytest.raises(ValueError):
        check_guest_mem(mem)


def test_ram_smaller_than_mem_plus_gap_is_a_programming_error(tmp_path: Path) -> None:
    ram = mmap.mmap(-1, 4 * MIB)  # no gap
    try:
        with pytest.raises(ValueError):
            load_kernel(ram, 4 * MIB, str(tmp_path / "whatever"))
    finally:
        ram.close()


def test_page_align() -> None:
    assert [page_align(n) for n in (0, 1, 4095, 4096, 4097)] == [0, 4096, 4096, 4096, 8192]


# --- ELF kernels -----------------------------------------------------------------------------


def test_elf_segments_load_at_their_physical_addresses(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = build_elf(tmp_path)
    data = path.read_bytes()
    image = load_kernel(ram32, 32 * MIB, str(path))

    assert image.kind == "elf"
    assert image.entry == struct.unpack_from("<I", data, 24)[0] == 0x100000
    loads = [ph for ph in program_headers(data) if ph[0] == 1]
    assert len(loads) == 2
    assert image.sections == tuple((paddr, memsz) for _t, _o, paddr, _f, memsz in loads)
    for _type, offset, paddr, filesz, memsz in loads:
        assert paddr < 0xC0000000  # physical, not the virtual link address
        assert ram32[paddr : paddr + filesz] == data[offset : offset + filesz]
        assert ram32[paddr + filesz : paddr + memsz] == bytes(memsz - filesz)  # bss stays zero
    # The text really is at 1 MiB, the data at the next page.
    assert ram32[0x100000] == 0xB8 and ram32[0x100001:0x100005] == struct.pack("<I", 0x12345678)
    assert ram32[0x100005:0x10000D] == b"TEXTMARK"
    assert ram32[0x101000:0x10100C] == b"DATAMARK" + struct.pack("<I", 0xDEADBEEF)
    assert ram32[:0x100000] == bytes(0x100000)  # nothing below the kernel was touched


def test_elf_linked_with_ttext_and_section_start(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = build_flat_elf(tmp_path, text=0x200000, data=0x280000)
    image = load_kernel(ram32, 32 * MIB, str(path))
    assert image.entry == 0x200000
    assert ram32[0x200005:0x20000D] == b"TEXTMARK"
    assert ram32[0x280000:0x280008] == b"DATAMARK"
    # ld may add a read-only segment for the ELF headers just below .text: it loads too.
    data = path.read_bytes()
    loads = [ph for ph in program_headers(data) if ph[0] == 1]
    assert {0x200000, 0x280000} <= {gpa for gpa, _ in image.sections}
    assert image.sections == tuple((paddr, memsz) for _t, _o, paddr, _f, memsz in loads)
    for _type, offset, paddr, filesz, _memsz in loads:
        assert ram32[paddr : paddr + filesz] == data[offset : offset + filesz]


def test_elf_segment_above_ram(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = build_elf(tmp_path, phys=0x3000000)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == (
        "Kernel segment 0 at gpa 0x3000000-0x300000f does not fit in 32 MiB of guest RAM (gpa 0-0x2000000)"
    )


def test_elf_bss_running_past_the_end_of_ram(tmp_path: Path) -> None:
    path = build_elf(tmp_path, bss=0x200000)
    ram = allocate_guest_ram(2 * MIB)
    try:
        with pytest.raises(LoadError) as e:
            load_kernel(ram, 2 * MIB, str(path))
    finally:
        ram.close()
    assert message(e).startswith("Kernel segment 1 at gpa 0x101000-")
    assert message(e).endswith("does not fit in 2 MiB of guest RAM (gpa 0-0x200000)")


def test_elf_segment_over_the_boot_pages(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = build_elf(tmp_path, phys=0x1000)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == (
        "Kernel segment 0 at gpa 0x1000-0x100f overlaps the boot_params and command line area (gpa 0-0x1800)"
    )


def test_elf_virtual_entry_point_is_refused(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = build_elf(tmp_path, entry="_start")
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == (
        "Kernel entry point 0xc0100000 is outside guest RAM (0-0x2000000): it must be a physical address"
    )


def test_elf_x86_64_is_malformed(tmp_path: Path, ram32: mmap.mmap) -> None:
    src, obj, out = tmp_path / "k64.S", tmp_path / "k64.o", tmp_path / "k64"
    src.write_text(".text\n.globl _start\n_start:\n  movq $1, %rax\n  jmp _start\n")
    _run("as", "--64", "-o", obj, src)
    _run("ld", "-m", "elf_x86_64", "-z", "noexecstack", "-Ttext=0x200000", "-o", out, obj)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(out))
    assert message(e) == "Malformed elf header"


def test_elf_relocatable_object_is_malformed(tmp_path: Path, ram32: mmap.mmap) -> None:
    src, obj = tmp_path / "k.S", tmp_path / "k.o"
    src.write_text(KERNEL_ASM.format(bss=16))
    _run("as", "--32", "-o", obj, src)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(obj))
    assert message(e) == "Malformed elf header"


# (offset, struct format, value) patches that each break one §3.2 header check.
HEADER_PATCHES = {
    "ELFCLASS64": (4, "<B", 2),
    "big endian": (5, "<B", 2),
    "ET_REL": (16, "<H", 1),
    "ET_DYN": (16, "<H", 3),
    "EM_X86_64": (18, "<H", 62),
    "EM_ARM": (18, "<H", 40),
    "phentsize 56": (42, "<H", 56),
    "phentsize 0": (42, "<H", 0),
    "phnum 0": (44, "<H", 0),
    "phnum 2049": (44, "<H", 2049),
}


@pytest.mark.parametrize("patch", HEADER_PATCHES.values(), ids=HEADER_PATCHES.keys())
def test_elf_header_checks(tmp_path: Path, ram32: mmap.mmap, patch: tuple[int, str, int]) -> None:
    data = bytearray(build_elf(tmp_path).read_bytes())
    offset, fmt, value = patch
    struct.pack_into(fmt, data, offset, value)
    bad = tmp_path / "bad"
    bad.write_bytes(data)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == "Malformed elf header"


def test_elf_with_2048_program_headers_passes_the_header_check(tmp_path: Path, ram32: mmap.mmap) -> None:
    # phnum at the limit is accepted: the real headers, moved to the end of the file, load,
    # then the next one runs off the end of the file.
    data = bytearray(build_elf(tmp_path).read_bytes())
    phoff = struct.unpack_from("<I", data, 28)[0]
    phnum = struct.unpack_from("<H", data, 44)[0]
    headers = data[phoff : phoff + 32 * phnum]
    struct.pack_into("<I", data, 28, len(data))  # e_phoff
    struct.pack_into("<H", data, 44, 2048)  # e_phnum
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data) + headers)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == f"Malformed elf header: program header {phnum} lies outside the file"
    assert ram32[0x100005:0x10000D] == b"TEXTMARK"


@pytest.mark.parametrize("content", [b"\x7fELF", b"\x7fELF" + bytes(47)], ids=["4 bytes", "51 bytes"])
def test_short_elf_is_malformed(tmp_path: Path, ram32: mmap.mmap, content: bytes) -> None:
    bad = tmp_path / "short"
    bad.write_bytes(content)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == "Malformed elf header"


def test_elf_program_headers_outside_the_file(tmp_path: Path, ram32: mmap.mmap) -> None:
    data = bytearray(build_elf(tmp_path).read_bytes())
    struct.pack_into("<I", data, 28, len(data) + 0x1000)  # e_phoff
    bad = tmp_path / "bad"
    bad.write_bytes(data)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == "Malformed elf header: program header 0 lies outside the file"


def test_elf_truncated_segment_data(tmp_path: Path, ram32: mmap.mmap) -> None:
    data = build_elf(tmp_path).read_bytes()
    _t, offset, _p, filesz, _m = program_headers(data)[0]
    bad = tmp_path / "truncated"
    bad.write_bytes(data[: offset + 4])
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == f"Reading offset {offset} len {filesz} gave 4: kernel {bad} is truncated"


def test_elf_without_loadable_segments(tmp_path: Path, ram32: mmap.mmap) -> None:
    data = bytearray(build_elf(tmp_path).read_bytes())
    phoff = struct.unpack_from("<I", data, 28)[0]
    for i in range(struct.unpack_from("<H", data, 44)[0]):
        struct.pack_into("<I", data, phoff + 32 * i, 4)  # PT_NOTE
    bad = tmp_path / "noload"
    bad.write_bytes(data)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == f"Kernel {bad} has no loadable (PT_LOAD) segments"


def test_elf_filesz_larger_than_memsz(tmp_path: Path, ram32: mmap.mmap) -> None:
    data = bytearray(build_elf(tmp_path).read_bytes())
    phoff = struct.unpack_from("<I", data, 28)[0]
    struct.pack_into("<I", data, phoff + 20, 4)  # p_memsz of segment 0 < its p_filesz
    bad = tmp_path / "bad"
    bad.write_bytes(data)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(bad))
    assert message(e) == "Malformed elf segment 0: file size 0xf > memory size 0x4"


# --- bzImages --------------------------------------------------------------------------------


def make_bzimage(setup_sects: int = 4, payload: bytes = b"", code32_start: int = 0x100000) -> bytes:
    """A bzImage-shaped file: a setup area full of 0xAA with a real setup header, then `payload`."""
    sects = setup_sects or 4
    image = bytearray(b"\xaa" * ((sects + 1) * 512))
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020C)
    struct.pack_into("<I", image, 0x214, code32_start)
    return bytes(image) + payload


PAYLOAD = bytes(range(256)) * 37 + b"END"


@pytest.mark.parametrize("setup_sects", [4, 0, 1, 30])
def test_bzimage_payload_lands_at_1mib(tmp_path: Path, ram32: mmap.mmap, setup_sects: int) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(setup_sects, PAYLOAD, code32_start=0x100000))
    image = load_kernel(ram32, 32 * MIB, str(path))
    assert image == KernelImage(entry=0x100000, kind="bzImage", sections=((0x100000, len(PAYLOAD)),))
    assert ram32[0x100000 : 0x100000 + len(PAYLOAD)] == PAYLOAD
    assert ram32[0x100000 + len(PAYLOAD)] == 0
    # The file's setup header is not copied anywhere: gpa 0 .. 1 MiB stays zero.
    assert ram32[:0x100000] == bytes(0x100000)


def test_bzimage_entry_is_code32_start(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, PAYLOAD, code32_start=0x100040))
    assert load_kernel(ram32, 32 * MIB, str(path)).entry == 0x100040


def test_bzimage_code32_start_outside_ram(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, PAYLOAD, code32_start=0xC0100000))
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == (
        "Kernel entry point 0xc0100000 is outside guest RAM (0-0x2000000): it must be a physical address"
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00", b"MZ" + bytes(100), os.urandom(4096), make_bzimage(4, PAYLOAD)[:0x217]],
    ids=["empty", "one byte", "short", "garbage", "header cut"],
)
def test_not_a_bzimage(tmp_path: Path, ram32: mmap.mmap, content: bytes) -> None:
    if content[0x202:0x206] == b"HdrS" or content.startswith(b"\x7fELF"):
        content = b"\x00" + content[1:]  # random bytes could, in theory, look valid
    path = tmp_path / "junk"
    path.write_bytes(content)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == "This doesn't look like a bzImage to me"


def test_bzimage_ending_inside_its_setup(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(10)[:2048])
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == f"This doesn't look like a bzImage to me: {path} ends inside its 10 setup sectors"


@pytest.mark.parametrize("mib", [2, 16])
def test_bzimage_needs_more_than_16mib(tmp_path: Path, mib: int) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, PAYLOAD))
    ram = allocate_guest_ram(mib * MIB)
    try:
        with pytest.raises(LoadError) as e:
            load_kernel(ram, mib * MIB, str(path))
    finally:
        ram.close()
    assert message(e) == (
        f"A bzImage needs more than 16 MiB of guest RAM (it decompresses itself at 16 MiB); "
        f"{mib} MiB is too small"
    )


def test_bzimage_just_above_16mib(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, PAYLOAD))
    mem = 16 * MIB + PAGE
    ram = allocate_guest_ram(mem)
    try:
        assert load_kernel(ram, mem, str(path)).kind == "bzImage"
    finally:
        ram.close()


def test_bzimage_too_big_for_ram(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    payload_size = 17 * MIB
    with path.open("wb") as f:
        f.write(make_bzimage(4))
        f.truncate(5 * 512 + payload_size)  # sparse
    ram = allocate_guest_ram(17 * MIB)
    try:
        with pytest.raises(LoadError) as e:
            load_kernel(ram, 17 * MIB, str(path))
    finally:
        ram.close()
    assert message(e) == (
        f"bzImage kernel ({payload_size} bytes at gpa 0x100000) does not fit in 17 MiB of guest RAM"
    )


def test_bzimage_filling_ram_exactly(tmp_path: Path) -> None:
    mem = 17 * MIB
    payload = os.urandom(mem - 0x100000)
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, payload))
    ram = allocate_guest_ram(mem)
    try:
        load_kernel(ram, mem, str(path))
        assert ram[0x100000:mem] == payload
        assert ram[mem : mem + GAP_SIZE] == bytes(GAP_SIZE)  # the gap is not RAM: untouched
    finally:
        ram.close()


# --- opening files ---------------------------------------------------------------------------


def test_missing_kernel(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "nope"
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(path))
    assert message(e) == f"Failed to open {path}: No such file or directory"


def test_kernel_is_a_directory(tmp_path: Path, ram32: mmap.mmap) -> None:
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(tmp_path))
    assert message(e) == f"Failed to open {tmp_path}: not a regular file"


def test_kernel_is_a_fifo_and_does_not_hang(tmp_path: Path, ram32: mmap.mmap) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LoadError) as e:
        load_kernel(ram32, 32 * MIB, str(fifo))
    assert message(e) == f"Failed to open {fifo}: not a regular file"


def test_unreadable_kernel(tmp_path: Path) -> None:
    """Root can read anything, so the load runs in a forked child that gave up root."""
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root if we have it, try, report, and leave at once
        message_text = "no error"
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            load_kernel(allocate_guest_ram(32 * MIB), 32 * MIB, str(path))
        except LoadError as err:
            message_text = str(err)
        finally:
            os.write(write_end, message_text.encode())
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 4096).decode() == f"Failed to open {path}: Permission denied"


# --- initrd ----------------------------------------------------------------------------------


def test_initrd_at_the_top_of_ram(tmp_path: Path, ram32: mmap.mmap) -> None:
    mem = 32 * MIB
    content = os.urandom(5000)
    path = tmp_path / "initrd"
    path.write_bytes(content)
    ram32[mem - 2 * PAGE : mem] = b"\xee" * (2 * PAGE)  # the page-rounding tail must be cleared
    gpa, size = load_initrd(ram32, mem, str(path))
    assert (gpa, size) == (mem - 8192, 8192)
    assert ram32[gpa : gpa + 5000] == content
    assert ram32[gpa + 5000 : mem] == bytes(8192 - 5000)
    assert ram32[mem : mem + 16] == bytes(16)


def test_initrd_of_whole_pages(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x01" * 3 * PAGE)
    assert load_initrd(ram32, 32 * MIB, str(path)) == (32 * MIB - 3 * PAGE, 3 * PAGE)


def test_initrd_beside_a_loaded_kernel(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x01" * PAGE)
    kernel = KernelImage(entry=0x100000, kind="elf", sections=((0x100000, 32 * MIB - PAGE - 0x100000),))
    assert load_initrd(ram32, 32 * MIB, str(path), kernel) == (32 * MIB - PAGE, PAGE)


def test_initrd_overlapping_the_kernel(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x01" * (2 * PAGE))
    kernel = KernelImage(entry=0x100000, kind="elf", sections=((0x100000, 0x1000), (0x1000000, 0xFFF001)))
    with pytest.raises(LoadError) as e:
        load_initrd(ram32, 32 * MIB, str(path), kernel)
    assert message(e) == (
        f"Initrd {path} at gpa 0x1ffe000-0x2000000 would overlap the kernel at gpa 0x1000000-0x1fff001: "
        "give the guest more memory"
    )


def test_initrd_too_big(tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    with path.open("wb") as f:
        f.truncate(2 * MIB)
    ram = allocate_guest_ram(2 * MIB)
    try:
        with pytest.raises(LoadError) as e:
            load_initrd(ram, 2 * MIB, str(path))
    finally:
        ram.close()
    assert message(e) == f"Initrd {path} ({2 * MIB} bytes) does not fit in 2 MiB of guest RAM"


def test_initrd_empty(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"")
    with pytest.raises(LoadError) as e:
        load_initrd(ram32, 32 * MIB, str(path))
    assert message(e) == f"Initrd {path} is empty"


def test_initrd_missing(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "initrd"
    with pytest.raises(LoadError) as e:
        load_initrd(ram32, 32 * MIB, str(path))
    assert message(e) == f"Failed to open {path}: No such file or directory"


# --- boot_params -----------------------------------------------------------------------------


def expected_boot_page(mem: int, initrd: tuple[int, int] | None) -> bytes:
    """The zero page of spec §3.3, from the spec's own offsets."""
    page = bytearray(4096)
    struct.pack_into("<H", page, 0x040, 0)  # apm_bios_info.version
    struct.pack_into("<Q", page, 0x058, 0)  # tboot_addr
    page[0x1E8] = 1  # e820_entries
    struct.pack_into("<QQI", page, 0x2D0, 0, mem, 1)  # e820_map[0] = RAM
    struct.pack_into("<H", page, 0x206, 0x0207)  # hdr.version
    page[0x211] = 0x40  # loadflags: KEEP_SEGMENTS
    struct.pack_into("<I", page, 0x228, 0x1000)  # cmd_line_ptr
    struct.pack_into("<I", page, 0x230, 0x1000000)  # kernel_alignment
    struct.pack_into("<I", page, 0x23C, 1)  # hardware_subarch = lguest
    if initrd:
        page[0x210] = 0xFF  # type_of_loader
        struct.pack_into("<II", page, 0x218, *initrd)  # ramdisk_image, ramdisk_size
    return bytes(page)


def test_boot_params_without_initrd(ram32: mmap.mmap) -> None:
    ram32[0:0x2000] = b"\xaa" * 0x2000  # e.g. leftovers: every other byte must become zero
    write_boot_params(ram32, 32 * MIB, "root=/dev/vda console=hvc0", None)
    assert ram32[0:4096] == expected_boot_page(32 * MIB, None)
    assert ram32[0x1000:0x1800] == b"root=/dev/vda console=hvc0".ljust(2048, b"\0")
    assert ram32[0x1800:0x2000] == b"\xaa" * 0x800  # nothing written past the command line buffer


def test_boot_params_fields_one_by_one(ram32: mmap.mmap) -> None:
    mem = 32 * MIB
    write_boot_params(ram32, mem, "", (mem - 0x3000, 0x3000))
    assert struct.unpack_from("<H", ram32, 0x040)[0] == 0
    assert struct.unpack_from("<Q", ram32, 0x058)[0] == 0
    assert ram32[0x1E8] == 1
    assert struct.unpack_from("<QQI", ram32, 0x2D0) == (0, mem, 1)
    assert ram32[0x2D0 + 20 : 0x2D0 + 40] == bytes(20)  # only one e820 entry
    assert ram32[0x206:0x208] == b"\x07\x02"
    assert ram32[0x210] == 0xFF
    assert ram32[0x211] == 0x40
    assert struct.unpack_from("<II", ram32, 0x218) == (mem - 0x3000, 0x3000)
    assert ram32[0x228:0x22C] == b"\x00\x10\x00\x00"
    assert ram32[0x230:0x234] == b"\x00\x00\x00\x01"
    assert ram32[0x23C:0x240] == b"\x01\x00\x00\x00"
    assert ram32[0x1000] == 0  # empty command line is just the NUL


def test_boot_params_with_initrd_from_load_initrd(tmp_path: Path, ram32: mmap.mmap) -> None:
    mem = 32 * MIB
    path = tmp_path / "initrd"
    path.write_bytes(b"\x42" * 10000)
    initrd = load_initrd(ram32, mem, str(path))
    write_boot_params(ram32, mem, "init=/bin/sh", initrd)
    assert ram32[0:4096] == expected_boot_page(mem, (mem - 12288, 12288))
    assert ram32[mem - 12288] == 0x42  # writing boot_params left the initrd alone


def test_boot_params_do_not_disturb_a_loaded_kernel(tmp_path: Path, ram32: mmap.mmap) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(4, PAYLOAD))
    load_kernel(ram32, 32 * MIB, str(path))
    write_boot_params(ram32, 32 * MIB, "quiet", None)
    assert ram32[0:4096] == expected_boot_page(32 * MIB, None)
    assert ram32[0x100000 : 0x100000 + len(PAYLOAD)] == PAYLOAD


def test_command_line_bytes(ram32: mmap.mmap) -> None:
    raw = "café -- single".encode()
    write_boot_params(ram32, 32 * MIB, "café -- single", None)
    assert ram32[0x1000 : 0x1000 + len(raw) + 1] == raw + b"\0"


def test_command_line_at_the_limit(ram32: mmap.mmap) -> None:
    write_boot_params(ram32, 32 * MIB, "x" * 2047, None)
    assert ram32[0x1000:0x17FF] == b"x" * 2047 and ram32[0x17FF] == 0


@pytest.mark.parametrize("length", [2048, 100000])
def test_command_line_too_long(ram32: mmap.mmap, length: int) -> None:
    with pytest.raises(LoadError) as e:
        write_boot_params(ram32, 32 * MIB, "x" * length, None)
    assert message(e) == f"Kernel command line is too long: {length} bytes, the limit is 2047"


def test_command_line_counts_bytes_not_characters(ram32: mmap.mmap) -> None:
    with pytest.raises(LoadError) as e:
        write_boot_params(ram32, 32 * MIB, "é" * 1024, None)
    assert message(e) == "Kernel command line is too long: 2048 bytes, the limit is 2047"


def test_command_line_with_nul(ram32: mmap.mmap) -> None:
    with pytest.raises(LoadError) as e:
        write_boot_params(ram32, 32 * MIB, "a\0b", None)
    assert message(e) == "Kernel command line contains a NUL character"


@pytest.mark.parametrize("initrd", [(32 * MIB - PAGE, 2 * PAGE), (0, PAGE), (32 * MIB, 0)])
def test_boot_params_reject_a_bogus_initrd_range(ram32: mmap.mmap, initrd: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        write_boot_params(ram32, 32 * MIB, "", initrd)
