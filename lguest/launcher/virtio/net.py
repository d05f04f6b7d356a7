"""The network device: frames between the Guest and a tap device or a UDP peer.

`--tunnet=<ipaddr>` is the original's: a host tap interface (root and
/dev/net/tun needed).  `--net=udp:<port>:<host>:<port>` is the rootless way: each
Guest's frames travel as UDP datagrams to the other Guest's Launcher (like QEMU's
`-netdev socket,udp=`), so two Guests on one machine form a private Ethernet with
nothing but loopback.  Every frame carries virtio's 12-byte header in front.
"""

from __future__ import annotations

import contextlib
import mmap
import select
import socket
import struct

from lguest import abi
from lguest.launcher.virtio.queue import BadDriver, Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice, wait_for_chains

VIRTIO_NET_F_MAC = 5
NET_HDR_SIZE = 12  # struct virtio_net_hdr_v1
MAX_FRAME = 65550
POLL_SECONDS = 0.1


class UdpLink:
    """A point-to-point Ethernet over UDP on this machine."""

    def __init__(self, local_port: int, peer: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", local_port))
        self.peer = peer

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # no peer (yet): the frame is lost, as on a wire
            self.sock.sendto(frame, self.peer)

    def receive(self) -> bytes:
        return self.sock.recv(MAX_FRAME)

    def close(self) -> None:
        self.sock.close()


def parse_udp(spec: str) -> tuple[int, tuple[str, int]]:
    """`udp:<local port>:<peer host>:<peer port>` -> (local port, peer address)."""
    parts = spec.split(":")
    if len(parts) != 4 or parts[0] != "udp" or not parts[1].isdigit() or not parts[3].isdigit():
        raise ValueError(f"Bad --net '{spec}': expected udp:<port>:<host>:<port>")
    return int(parts[1]), (parts[2], int(parts[3]))


class NetDevice(VirtioDevice):
    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, link: UdpLink, mac: bytes) -> None:
        super().__init__("net", abi.VirtioId.NET, abi.PCI_CLASS_NET, irq, mac + bytes(2),
                         1 << VIRTIO_NET_F_MAC, [("rx", serve_rx), ("tx", serve_tx)], ram, ram_size)
        self.link = link


def serve_tx(device: VirtioDevice, queue: Virtqueue) -> None:
    assert isinstance(device, NetDevice)
    for chain in wait_for_chains(device, queue):
        if chain.into:
            raise BadDriver("Input buffers in net output queue?")
        packet = chain.out_bytes()
        if len(packet) < NET_HDR_SIZE:
            raise BadDriver("iovec too short")
        device.link.send(packet[NET_HDR_SIZE:])
        queue.push(chain.head, 0)
        device.signal(queue)


def serve_rx(device: VirtioDevice, queue: Virtqueue) -> None:
    assert isinstance(device, NetDevice)
    for chain in wait_for_chains(device, queue):
        if chain.out:
            raise BadDriver("Output buffers in net input queue?")
        frame = None
        while device.running and frame is None:
            ready, _, _ = select.select([device.link], [], [], POLL_SECONDS)
            if ready:
                frame = device.link.receive()
        if frame is None:
            return
        packet = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1) + frame  # num_buffers = 1
        written = 0
        for buffer in chain.into:
            part = packet[written:written + len(buffer)]
            buffer[:len(part)] = part
            written += len(part)
        queue.push(chain.head, written)
        device.signal(queue)
