"""Snapshots: a running Guest saved to a file, and brought back (`--snapshot`, `--restore`).

The Host hands over its state as data (`Guest.save_state`), each device its own
(`save_state`), and this module owns the file.  The format, version 1:

    header   "LGSNAPSH", format version (u32), Guest memory size in bytes (u64),
             CRC-32 of those 20 bytes (u32)
    sections each a tag (4 bytes), payload length (u64), CRC-32 of the payload (u32),
             then the payload:
      STAT   JSON: the options the Guest was built with, the Host's GuestState, and
             every device's state (the console first, then command-line order)
      RAM    the count of runs of non-zero pages (u32), each run's first page and
             length (u32 pairs), then the pages of all runs as one zlib stream
      END    empty: a file cut at a section boundary is still seen to be short

Zero pages are not written at all, and the rest goes through zlib: it restores at
hundreds of MB/s where lzma manages tens, and restore speed is the point; lzma's
smaller files would not buy back the time.  Every check is made before anything is
built or opened for writing, so a bad snapshot costs one line and exit status 2,
and leaves the disk images as they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any

from lguest import abi
from lguest.host.core import Guest
from lguest.host.pgformat import PAE
from lguest.host.state import BadState, GuestState
from lguest.launcher.boot import LoadError
from lguest.launcher.options import Options
from lguest.launcher.pci import BadDriver
from lguest.launcher.virtio.block import disk_identity
from lguest.launcher.virtio.transport import VirtioDevice

MAGIC = b"LGSNAPSH"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIQ")
CRC = struct.Struct("<I")
SECTION = struct.Struct("<4sQI")
EXTENT = struct.Struct("<II")
COUNT = struct.Struct("<I")
PAGE = abi.PAGE_SIZE
ZERO_PAGE = bytes(PAGE)
COMPRESSION = 6  # zlib's default: level 1 saves a little time and costs a third more disk
# The options a Guest was built with: a restore builds the same machine.
BUILD_OPTIONS = ("mem_mib", "kernel", "cmdline", "initrd", "syscall_vector", "bundled", "pae", "devices")


class SnapshotError(LoadError):
    """A snapshot that cannot be restored: one line, exit status 2."""


@dataclass
class Snapshot:
    """A snapshot file, read and checked: what the Launcher needs to rebuild the Guest."""

    path: str
    options: dict[str, Any]
    guest: GuestState
    devices: list[dict[str, Any]]
    ram: bytes  # the RAM section's payload, unpacked into the Guest's RAM by fill_ram
    mem_size: int

    def fail(self, reason: str) -> SnapshotError:
        return SnapshotError(f"snapshot {self.path}: {reason}")

    def fill_ram(self, ram: memoryview | bytearray | Any) -> None:
        """Write the saved pages into fresh (zeroed) Guest RAM."""
        extents, stream = _extents(self.ram, self.mem_size, self.fail)
        expected = sum(count for _, count in extents) * PAGE
        data = zlib.decompressobj().decompress(stream, expected + 1) if expected else b""
        if len(data) != expected:
            raise self.fail("RAM section does not hold the pages it lists")
        pages, done = memoryview(data), 0  # a view: no copy of each run on its way to RAM
        for first, count in extents:
            ram[first * PAGE:(first + count) * PAGE] = pages[done:done + count * PAGE]
            done += count * PAGE

    def restore(self, guest: Guest, devices: list[VirtioDevice]) -> None:
        """The Host's state into the Guest, each device's into its device."""
        if len(devices) != len(self.devices):
            raise self.fail(f"{len(self.devices)} devices saved, {len(devices)} built")
        try:
            guest.restore_state(self.guest)
            for device, state in zip(devices, self.devices, strict=True):
                device.restore_state(state)
        except (BadState, BadDriver, KeyError, TypeError, ValueError) as err:
            raise self.fail(f"bad saved state: {err}") from None


# --- saving ------------------------------------------------------------------------------
# tour:L.120 Snapshots: a file the Launcher owns
# A save request (SIGUSR1, or Ctrl-] `s`) reaches the vCPU as an action for its next safe
# point.  There the devices stop their service threads (a request in hand is finished, one
# waiting for input goes back to its ring), the Host hands over its state and each device its
# own, and this module writes them with the RAM: zero pages left out, the rest through zlib,
# every section checksummed, the file renamed into place whole.  Restoring reads and checks
# everything first (header, checksums, version, memory size, each disk against the size and
# modification time it had), so a bad file is one line and status 2 with nothing touched; then
# `build_machine` fills RAM from it instead of loading a kernel and gives each part its state.
def save(path: str, opts: Options, guest: Guest, devices: list[VirtioDevice], ram: Any) -> int:
    """Write a snapshot of a Guest stopped at a safe point; the bytes written.

    The devices' service threads are paused meanwhile, so no ring moves under us; the
    file appears whole or not at all (written aside, then renamed).
    """
    for device in devices:
        device.pause()
    try:
        state = {"options": {name: getattr(opts, name) for name in BUILD_OPTIONS},
                 "guest": guest.save_state().as_dict(),
                 "devices": [device.save_state() for device in devices]}
        state["options"]["kernel"] = opts.kernel and os.path.abspath(opts.kernel)
        state["options"]["pae"] = guest.pages.format is PAE  # the mode it runs in, however chosen
        body = _section(b"STAT", json.dumps(state).encode())
        body += _section(b"RAM ", _pack_ram(ram, guest.memory.size))
    finally:
        for device in devices:
            device.resume()
    header = HEADER.pack(MAGIC, FORMAT_VERSION, guest.memory.size)
    data = header + CRC.pack(zlib.crc32(header)) + body + _section(b"END ", b"")
    _write_whole(path, data)
    return len(data)


def _section(tag: bytes, payload: bytes) -> bytes:
    return SECTION.pack(tag, len(payload), zlib.crc32(payload)) + payload


def _pack_ram(ram: Any, size: int) -> bytes:
    """Runs of non-zero pages, and their contents compressed as one stream."""
    extents: list[tuple[int, int]] = []
    compressor = zlib.compressobj(COMPRESSION)
    chunks = []
    start = None
    for page in range(size // PAGE + 1):
        zero = page == size // PAGE or ram[page * PAGE:(page + 1) * PAGE] == ZERO_PAGE
        if zero and start is not None:
            extents.append((start, page - start))
            chunks.append(compressor.compress(ram[start * PAGE:page * PAGE]))
            start = None
        elif not zero and start is None:
            start = page
    chunks.append(compressor.flush())
    return (COUNT.pack(len(extents)) + b"".join(EXTENT.pack(*e) for e in extents) + b"".join(chunks))


def _write_whole(path: str, data: bytes) -> None:
    """Written aside and renamed: a reader never sees half a file.  Readable by its owner
    only (mkstemp's mode), since it holds all of the Guest's memory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".snapshot-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# --- reading -------------------------------------------------------------------------------
def read(path: str) -> Snapshot:
    """Read and check a snapshot file: SnapshotError (one line) for anything wrong."""
    def fail(reason: str) -> SnapshotError:
        return SnapshotError(f"snapshot {path}: {reason}")

    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    if len(data) < HEADER.size + CRC.size:
        raise fail("truncated (shorter than its header)" if data.startswith(MAGIC[:len(data)])
                   else "not an lguest snapshot")
    magic, version, mem_size = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise fail("not an lguest snapshot")
    if CRC.unpack_from(data, HEADER.size)[0] != zlib.crc32(data[:HEADER.size]):
        raise fail("corrupted header (checksum mismatch)")
    if version != FORMAT_VERSION:
        raise fail(f"format version {version}, but this lguest reads version {FORMAT_VERSION}")
    sections = _sections(data, HEADER.size + CRC.size, fail)
    try:
        state = json.loads(sections[b"STAT"])
        guest = GuestState.from_dict(state["guest"])
        snapshot = Snapshot(path, dict(state["options"]), guest, list(state["devices"]),
                            sections[b"RAM "], mem_size)
    except (ValueError, KeyError, TypeError) as err:
        raise fail(f"bad saved state: {err}") from None
    if snapshot.options.get("mem_mib", 0) << 20 != mem_size:
        raise fail("bad saved state: memory size")
    return snapshot


def _sections(data: bytes, at: int, fail: Any) -> dict[bytes, bytes]:
    sections: dict[bytes, bytes] = {}
    while b"END " not in sections:
        if at + SECTION.size > len(data):
            raise fail("truncated (it ends before its END section)")
        tag, length, crc = SECTION.unpack_from(data, at)
        at += SECTION.size
        if at + length > len(data):
            raise fail(f"truncated (section {tag.decode(errors='replace').strip()} is cut short)")
        payload = data[at:at + length]
        at += length
        if zlib.crc32(payload) != crc:
            raise fail(f"section {tag.decode(errors='replace').strip()} is corrupted (checksum mismatch)")
        sections[tag] = payload
    for tag in (b"STAT", b"RAM "):
        if tag not in sections:
            raise fail(f"no {tag.decode().strip()} section")
    return sections


def _extents(payload: bytes, mem_size: int, fail: Any) -> tuple[list[tuple[int, int]], bytes]:
    if len(payload) < COUNT.size:
        raise fail("RAM section too short")
    count = COUNT.unpack_from(payload)[0]
    end = COUNT.size + count * EXTENT.size
    if end > len(payload):
        raise fail("RAM section too short")
    extents = [EXTENT.unpack_from(payload, COUNT.size + i * EXTENT.size) for i in range(count)]
    if any((first + pages) * PAGE > mem_size for first, pages in extents):
        raise fail("RAM section reaches past the Guest's memory")
    return extents, payload[end:]


# --- restoring: the command line meets the snapshot ------------------------------------------
def restored_options(snapshot: Snapshot, opts: Options, force: bool) -> Options:
    """The options to rebuild the saved Guest with: its own, with the devices' files
    replaced by any the command line gives again, each disk checked against the one saved."""
    saved = snapshot.options
    if opts.mem_mib and opts.mem_mib != saved["mem_mib"]:
        raise snapshot.fail(f"of a {saved['mem_mib']} MiB Guest, but {opts.mem_mib} MiB was asked for")
    saved_devices = [tuple(device) for device in saved["devices"]]
    devices = list(opts.devices) or saved_devices
    if [kind for kind, _ in devices] != [kind for kind, _ in saved_devices]:
        raise snapshot.fail(f"its devices are {_kinds(saved_devices)}, but the command line gives "
                            f"{_kinds(devices)}")
    disks = [state["disk"] for state in snapshot.devices if "disk" in state]
    blocks = [value for kind, value in devices if kind == "block"]
    for value, disk in zip(blocks, disks, strict=True):
        _check_disk(snapshot, value.partition(",")[0], disk, force)
    build = {name: saved[name] for name in BUILD_OPTIONS} | {"devices": tuple(devices)}
    return dataclasses.replace(opts, **build, restore=None)


def _kinds(devices: list[tuple[str, str]]) -> str:
    return ", ".join(f"--{kind}" for kind, _ in devices) or "none"


def _check_disk(snapshot: Snapshot, path: str, saved: dict[str, Any], force: bool) -> None:
    try:
        now = disk_identity(path, os.stat(path))
    except OSError as err:
        raise snapshot.fail(f"disk {path}: {err.strerror}") from None
    if force:
        return
    if now["size"] != saved["size"]:
        raise snapshot.fail(f"disk {path} is {now['size']} bytes, the saved Guest's was {saved['size']}"
                            " (--force-restore uses it anyway)")
    if now["mtime_ns"] != saved["mtime_ns"]:
        raise snapshot.fail(f"disk {path} was modified after the snapshot (--force-restore uses it anyway)")
