"""The block device (`--block=<file>[,ro]`): a file as a disk (spec §8.4).

Each request is a header (type, priority, sector), the data, and one status byte
the device writes last.  Reads and writes go straight between the file and Guest
RAM; a FLUSH is an fdatasync, so what the Guest flushed is on the disk even if the
Launcher is killed the next instant.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct

from lguest import abi
from lguest.launcher.boot import LoadError
from lguest.launcher.pci import BadDriver, HostLink
from lguest.launcher.virtio.queue import Chain, Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice

SECTOR = 512
SEG_MAX = 254
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID = 0, 1, 4, 8
STATUS_OK, STATUS_IOERR, STATUS_UNSUPP = 0, 1, 2
HEADER = struct.Struct("<IIQ")
CONFIG_SIZE = 36  # struct virtio_blk_config up to num_queues; we fill capacity and seg_max


class BlockDevice(VirtioDevice):
    """A disk backed by the open file `fd`, which it owns from now on."""

    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, fd: int, read_only: bool, *,
                 host: HostLink, path: str = "") -> None:
        self.fd = fd
        self.path = path  # what a snapshot records, to check the disk against on restore
        self.read_only = read_only
        self.capacity = os.lseek(fd, 0, os.SEEK_END) // SECTOR  # st_size is 0 for a block device
        config = bytearray(CONFIG_SIZE)
        struct.pack_into("<QII", config, 0, self.capacity, 0, SEG_MAX)
        features = 1 << VIRTIO_BLK_F_SEG_MAX | (1 << VIRTIO_BLK_F_RO if read_only else 0)
        super().__init__("block", abi.VirtioId.BLOCK, abi.PCI_CLASS_BLOCK, irq, bytes(config), features,
                         [("request", self.serve_requests)], ram, ram_size, host)

    @classmethod
    def from_option(cls, value: str, irq: int, ram: mmap.mmap, ram_size: int, host: HostLink) -> BlockDevice:
        """`--block=<file>[,ro]`."""
        path, _, flag = value.partition(",")
        if flag not in ("", "ro"):
            raise LoadError(f"Bad --block '{value}': the only option is ',ro'")
        return cls(irq, ram, ram_size, open_disk(path, read_only=bool(flag)), read_only=bool(flag), host=host,
                   path=path)

    def save_state(self) -> dict[str, object]:
        """The transport's state, and which disk this was: its size and modification time."""
        state = super().save_state()
        state["disk"] = disk_identity(self.path, os.fstat(self.fd))
        return state

    def close(self) -> None:
        os.close(self.fd)

    # tour:D.110 A block request, and the used ring
    # A disk request is an out header (type, priority, sector), then the data (out for a
    # write, in for a read), then one in byte for the status.  `handle` does the I/O straight
    # between the file and the Guest's buffers and writes the status byte last.  Then `push`
    # hands the chain back: the used ring gets (head, bytes written) in its next slot, and
    # only after that does used.idx move on, so the Guest never sees an index whose entry is
    # not there yet.  The entropy device (rng.py) is the same loop at its smallest.
    def serve_requests(self, queue: Virtqueue) -> None:
        for chain in self.chains(queue):
            queue.push(chain.head, self.handle(chain))
            self.signal(queue)

    def handle(self, chain: Chain) -> int:
        """Do one request; the number of bytes written into the Guest's buffers."""
        if not chain.into or not len(chain.into[-1]):
            raise BadDriver("Bad virtblk cmd with no room for status")
        head = chain.out_bytes()
        if len(head) < HEADER.size:
            raise BadDriver("iovec too short")
        kind, _, sector = HEADER.unpack_from(head)
        data_in = list(chain.into)
        status_buffer = data_in[-1]
        data_in[-1] = status_buffer[:-1]
        offset = sector * SECTOR
        try:
            if kind == VIRTIO_BLK_T_OUT:
                status, written = self.write(offset, head[HEADER.size:]), 0
            elif kind == VIRTIO_BLK_T_FLUSH:
                os.fdatasync(self.fd)
                status, written = STATUS_OK, 0
            elif kind == VIRTIO_BLK_T_IN:
                status, written = self.read(offset, data_in)
            else:
                status, written = STATUS_UNSUPP, 0
        except OSError:
            # The host refused (EIO, EFBIG, a file that cannot be synced...): the
            # Guest sees a failed request, as it would from a real disk.
            status, written = STATUS_IOERR, 0
        status_buffer[-1] = status
        return written + 1

    def write(self, offset: int, data: bytes) -> int:
        if self.read_only:
            return STATUS_IOERR
        if offset + len(data) > self.capacity * SECTOR:
            raise BadDriver(f"Write past end {offset // SECTOR}+{len(data)}")
        return STATUS_OK if os.pwrite(self.fd, data, offset) == len(data) else STATUS_IOERR

    def read(self, offset: int, buffers: list[memoryview]) -> tuple[int, int]:
        if offset + sum(len(b) for b in buffers) > self.capacity * SECTOR:
            return STATUS_IOERR, 0  # past the end of the disk: a failed request, not our crash
        done = 0
        for buffer in buffers:
            got = os.preadv(self.fd, [buffer], offset + done) if len(buffer) else 0
            done += got
            if got < len(buffer):
                return STATUS_IOERR, done
        return STATUS_OK, done



def disk_identity(path: str, st: os.stat_result) -> dict[str, object]:
    """What tells a disk image from another, or from itself changed: where, how big, and
    when last written (the Guest's page cache in a snapshot is only good for that one)."""
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def open_disk(path: str, read_only: bool) -> int:
    """A --block file, checked before boot: a regular file or a block device.

    Opened without waiting (a FIFO would otherwise block the open itself), then
    made blocking again for the service thread.
    """
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NONBLOCK)
    except OSError as err:
        raise LoadError(f"Failed to open {path}: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise LoadError(f"Bad --block '{path}': not a regular file or a block device")
    os.set_blocking(fd, True)
    return fd
