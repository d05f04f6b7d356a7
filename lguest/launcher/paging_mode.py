"""Is the kernel a PAE build?  Read from the image, in the kernel's own words.

Host and Guest must agree on the page-table format (spec §6.1), and nothing in the boot
protocol says which one a kernel uses: a bzImage's setup header and an ELF's headers
are the same for both builds, and a bzImage's payload is a stripped vmlinux.  What does
differ, in every i386 Linux with printk, is one boot message of `x86_report_nx()`: a
PAE build can say that NX protection is active, a non-PAE build can only say that it
cannot be enabled on a non-PAE kernel.  Both strings sit uncompressed in a vmlinux's
rodata and in the decompressed payload of a bzImage, so we look for them there.

An image with neither string (puppy, a kernel without printk, a payload compressed in a
way Python cannot undo) is undecided: the Launcher's option says, else it runs as
non-PAE, and a Guest in the other format is killed by name at its first NEW_PGTABLE.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol

PAE_MARKER = b"NX (Execute Disable) protection: active"
NON_PAE_MARKER = b"NX (Execute Disable) protection cannot be enabled: non-PAE kernel!"
# More than any i386 kernel decompresses to: a file that claims more is not searched further.
MAX_KERNEL = 256 << 20


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def _inflate(payload: bytes) -> bytes:
    """A bzImage payload decompressed as its magic says (b"" if we cannot or it is corrupt).

    Each decompressor stops at the end of its stream: the size word the kernel's build
    appends is left over, not an error.
    """
    if payload.startswith(b"\xfd7zXZ\x00"):
        decompressor: _Decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    elif payload.startswith(b"\x5d\x00"):
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    elif payload.startswith(b"\x1f\x8b"):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif payload.startswith(b"BZh"):
        decompressor = bz2.BZ2Decompressor()
    else:
        return b""
    try:
        return decompressor.decompress(payload, MAX_KERNEL)
    except (lzma.LZMAError, zlib.error, OSError, EOFError):
        return b""


def _says(kernel: bytes) -> bool | None:
    if PAE_MARKER in kernel:
        return True
    if NON_PAE_MARKER in kernel:
        return False
    return None


# tour:L.55 Two page-table formats: the kernel says which
# lguest's Host module was built for one format, PAE or not, and a Guest had to match it.
# Ours takes either, per Guest, so the Launcher must know which one a kernel uses before
# it runs: a Guest whose tables the Host walks in the wrong format would die of a page
# fault on the instruction after its first NEW_PGTABLE.  The boot protocol does not say;
# the kernel's own boot messages do, and they are in the image (a bzImage's payload is
# decompressed here, in memory).  `--pae`/`--no-pae` override it, and should the image
# say nothing and the guess be wrong, the Host names the mismatch instead of a page fault.
def image_is_pae(ram: bytes | memoryview, sections: tuple[tuple[int, int], ...],
                 payload: tuple[int, int] | None) -> bool | None:
    """True for a PAE kernel, False for a non-PAE one, None if the image does not say.

    `sections` are the (gpa, size) ranges loaded into `ram`; `payload` is a bzImage's
    compressed kernel there, as (gpa, length).
    """
    if payload is not None:
        gpa, length = payload
        return _says(_inflate(bytes(ram[gpa:gpa + length])))
    for gpa, size in sections:
        said = _says(bytes(ram[gpa:gpa + size]))
        if said is not None:
            return said
    return None
