"""The network device: frames between the Guest and a tap device or a UDP peer.

`--tunnet=<ipaddr>[:<mac>]` (or `bridge:<name>[:<mac>]`) is the original's: a host
tap interface with the Host end at <ipaddr> (root and /dev/net/tun needed), which
carries virtio's 12-byte header itself so checksum and segmentation offloads pass
through.  `--net=udp:<port>:<host>:<port>` is the rootless way: each Guest's
frames travel as UDP datagrams to the other Guest's Launcher (like QEMU's
`-netdev socket,udp=`), so two Guests on one machine form a private Ethernet with
nothing but loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import socket
import struct

from lguest import abi
from lguest.launcher.boot import LoadError
from lguest.launcher.pci import BadDriver, HostLink
from lguest.launcher.virtio.queue import Virtqueue
from lguest.launcher.virtio.transport import VirtioDevice

VIRTIO_NET_F_MAC = 5
NET_HDR_SIZE = 12  # struct virtio_net_hdr_v1
RX_HEADER = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)  # no offloads, num_buffers 1
MAX_FRAME = 65550
POLL_SECONDS = 0.1
MIN_PORT, MAX_PORT = 1, 65535
# Offloads a tap can take and give (§8.4): CSUM, GUEST_CSUM, GUEST_TSO4/6/ECN,
# HOST_TSO4/6/ECN, and indirect descriptors.
TAP_FEATURES = sum(1 << bit for bit in (0, 1, 7, 8, 9, 11, 12, 13, 28))
# Linux's tun/tap and socket ioctls.
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
SIOCSIFADDR, SIOCSIFFLAGS, SIOCBRADDIF = 0x8916, 0x8914, 0x89A2
IFF_UP, IFF_RUNNING = 0x1, 0x40


class UdpLink:
    """A point-to-point Ethernet over UDP on this machine: bare frames on the wire."""

    features = 0

    def __init__(self, local_port: int, peer: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", local_port))
        self.peer = peer

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, packet: bytes) -> None:
        """A virtio packet (header + frame) from the Guest."""
        with contextlib.suppress(OSError):  # no peer (yet): the frame is lost, as on a wire
            self.sock.sendto(packet[NET_HDR_SIZE:], self.peer)

    def receive(self) -> bytes:
        """The next frame, as a virtio packet (a header saying: nothing to offload)."""
        return RX_HEADER + self.sock.recv(MAX_FRAME)

    def close(self) -> None:
        self.sock.close()


class TapLink:
    """A host tap interface (the original's --tunnet): packets keep their virtio header."""

    features = TAP_FEATURES

    def __init__(self, spec: str) -> None:
        bridged = spec.startswith("bridge:")
        target, _, mac = spec.removeprefix("bridge:").partition(":")
        self.mac = parse_mac(mac) if mac else None
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR)
        except OSError as err:
            raise ValueError(f"opening /dev/net/tun: {err.strerror}") from None
        try:
            ifr = fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", b"tap%d", IFF_TAP | IFF_NO_PI
                                                              | IFF_VNET_HDR))
        except OSError:
            raise ValueError("configuring /dev/net/tun") from None
        self.name = ifr[:16].rstrip(b"\0").decode()
        self._ioctl(TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
                    "Could not set features for tun device")
        self._ioctl(TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_SIZE),  # by reference, unlike the others
                    f"Setting tun header size to {NET_HDR_SIZE}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ip:
            if bridged:
                self._join_bridge(ip, target)
            else:
                self._configure(ip, target)

    def _ioctl(self, request: int, value: int | bytes, failure: str) -> None:
        try:
            fcntl.ioctl(self.fd, request, value)
        except OSError:
            raise ValueError(failure) from None

    def _configure(self, ip: socket.socket, address: str) -> None:
        try:
            packed = socket.inet_aton(address)
        except OSError:
            raise ValueError(f"Failed to parse IP address '{address}'") from None
        ifr = struct.pack("16sH2s4s8s", self.name.encode(), socket.AF_INET, b"", packed, b"")
        try:
            fcntl.ioctl(ip, SIOCSIFADDR, ifr)
        except OSError:
            raise ValueError(f"Setting {self.name} interface address") from None
        try:
            fcntl.ioctl(ip, SIOCSIFFLAGS, struct.pack("16sH", self.name.encode(), IFF_UP | IFF_RUNNING))
        except OSError:
            raise ValueError(f"Bringing interface {self.name} up") from None

    def _join_bridge(self, ip: socket.socket, bridge: str) -> None:
        if not bridge:
            raise ValueError("must specify bridge name")
        index = socket.if_nametoindex(self.name)
        try:
            fcntl.ioctl(ip, SIOCBRADDIF, struct.pack("16si", bridge.encode(), index))
        except OSError:
            raise ValueError(f"can't add {self.name} to bridge {bridge}") from None

    def fileno(self) -> int:
        return self.fd

    def send(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, packet)

    def receive(self) -> bytes:
        return os.read(self.fd, MAX_FRAME)

    def close(self) -> None:
        os.close(self.fd)


def parse_udp(spec: str) -> tuple[int, tuple[str, int]]:
    """`udp:<local port>:<peer host>:<peer port>` -> (local port, peer address)."""
    parts = spec.split(":")
    if len(parts) != 4 or parts[0] != "udp" or not parts[1].isdigit() or not parts[3].isdigit():
        raise ValueError(f"Bad --net '{spec}': expected udp:<port>:<host>:<port>")
    local, peer = int(parts[1]), int(parts[3])
    if not (MIN_PORT <= local <= MAX_PORT and MIN_PORT <= peer <= MAX_PORT):
        raise ValueError(f"Bad --net '{spec}': ports must be {MIN_PORT}..{MAX_PORT}")
    return local, (parts[2], peer)


def parse_mac(text: str) -> bytes:
    try:
        mac = bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise ValueError(f"Failed to parse mac address '{text}'")
    return mac



# tour:D.140 The network device
# Two queues again: tx carries frames from the Guest, rx holds empty buffers for frames
# to it.  Each frame has a 12-byte virtio header in front (checksum and segmentation
# hints).  The wire is one of two links: a host tap interface, which speaks that header
# itself (the original's --tunnet, root needed), or UDP to another Launcher on this
# machine (--net), which sends the bare frame and gives each received one an empty header.
class NetDevice(VirtioDevice):
    """A network card whose wire is `link`, which it owns from now on."""

    def __init__(self, irq: int, ram: mmap.mmap, ram_size: int, link: UdpLink | TapLink,
                 mac: bytes | None, *, host: HostLink) -> None:
        features = link.features | (1 << VIRTIO_NET_F_MAC if mac else 0)
        super().__init__("net", abi.VirtioId.NET, abi.PCI_CLASS_NET, irq, (mac or bytes(6)) + bytes(2),
                         features, [("rx", self.serve_rx), ("tx", self.serve_tx)], ram, ram_size, host)
        self.link = link

    @classmethod
    def over_udp(cls, value: str, irq: int, ram: mmap.mmap, ram_size: int, host: HostLink) -> NetDevice:
        """`--net=udp:<port>:<host>:<port>`."""
        try:
            port, peer = parse_udp(value)
            link = UdpLink(port, peer)
        except (ValueError, OSError) as err:
            raise LoadError(str(err)) from None
        # A locally administered MAC that differs per port, so two Guests never clash.
        return cls(irq, ram, ram_size, link, bytes([0x02, 0x00, 0x00, 0x00, port >> 8 & 0xFF, port & 0xFF]),
                   host=host)

    @classmethod
    def over_tap(cls, value: str, irq: int, ram: mmap.mmap, ram_size: int, host: HostLink) -> NetDevice:
        """`--tunnet=<ipaddr>[:<mac>]` or `--tunnet=bridge:<bridge>[:<mac>]`."""
        try:
            tap = TapLink(value)
        except ValueError as err:
            raise LoadError(str(err)) from None
        return cls(irq, ram, ram_size, tap, tap.mac, host=host)

    def close(self) -> None:
        self.link.close()

    def serve_tx(self, queue: Virtqueue) -> None:
        for chain in self.chains(queue):
            if chain.into:
                raise BadDriver("Input buffers in net output queue?")
            packet = chain.out_bytes()
            if len(packet) < NET_HDR_SIZE:
                raise BadDriver("iovec too short")
            self.link.send(packet)
            queue.push(chain.head, 0)
            self.signal(queue)

    def serve_rx(self, queue: Virtqueue) -> None:
        for chain in self.chains(queue):
            if chain.out:
                raise BadDriver("Output buffers in net input queue?")
            packet = None
            while self.running and packet is None:
                ready, _, _ = select.select([self.link], [], [], POLL_SECONDS)
                if ready:
                    packet = self.link.receive()
            if packet is None:
                queue.unpop()  # stopped while waiting for a frame: the buffer stays the Guest's
                return
            queue.push(chain.head, chain.scatter(packet))
            self.signal(queue)
