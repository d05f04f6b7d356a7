"""The virtio 1.0 PCI transport: common configuration, notify and ISR (spec §7.3).

The Guest's driver talks to a device through BAR0: feature negotiation, the
status handshake (ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK), and the
set-up of each virtqueue.  We enforce the order and the access widths exactly as
the 4.x Launcher did; any violation ends the Guest with `<dev>: bad driver: <msg>`.
At DRIVER_OK each enabled queue gets its own service thread, as in lguest 4.x, so
the vCPU never waits for a disk or a terminal.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterator

from lguest import abi
from lguest.launcher.pci import VirtioPciDevice
from lguest.launcher.virtio.queue import (
    DEFAULT_SIZE,
    VIRTIO_RING_F_INDIRECT_DESC,
    BadDriver,
    Chain,
    Virtqueue,
)

VIRTIO_F_VERSION_1 = 32
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
# The one step each status bit may complete (the bits that must already be set).
STATUS_STEPS = {ACKNOWLEDGE: 0, DRIVER: ACKNOWLEDGE, FEATURES_OK: ACKNOWLEDGE | DRIVER,
                DRIVER_OK: ACKNOWLEDGE | DRIVER | FEATURES_OK}

# Common configuration registers: offset -> (name, width in bytes).
COMMON = {
    0: ("device_feature_select", 4), 4: ("device_feature", 4), 8: ("guest_feature_select", 4),
    12: ("guest_feature", 4), 16: ("msix_config", 2), 18: ("num_queues", 2), 20: ("device_status", 1),
    21: ("config_generation", 1), 22: ("queue_select", 2), 24: ("queue_size", 2),
    26: ("queue_msix_vector", 2), 28: ("queue_enable", 2), 30: ("queue_notify_off", 2),
    32: ("queue_desc_lo", 4), 36: ("queue_desc_hi", 4), 40: ("queue_avail_lo", 4),
    44: ("queue_avail_hi", 4), 48: ("queue_used_lo", 4), 52: ("queue_used_hi", 4),
    abi.VirtioMmio.NOTIFY: ("notify", 2), abi.VirtioMmio.ISR: ("isr", 1),
}
# queue_desc_lo .. queue_used_hi: which ring, and whether it is the (always 0) high half.
QUEUE_ADDRESSES = {"queue_desc_lo": ("desc", False), "queue_desc_hi": ("desc", True),
                   "queue_avail_lo": ("avail", False), "queue_avail_hi": ("avail", True),
                   "queue_used_lo": ("used", False), "queue_used_hi": ("used", True)}

STOP_TIMEOUT = 2.0  # seconds: a hang guard; a service thread notices a stop within 0.1 s
QueueService = Callable[["VirtioDevice", Virtqueue], None]


class VirtioDevice(VirtioPciDevice):
    """A virtio device: its features, status, queues and their service threads."""

    def __init__(self, name: str, virtio_id: int, pci_class: tuple[int, int], irq: int,
                 device_config: bytes, features: int, queues: list[tuple[str, QueueService]],
                 ram: mmap.mmap, ram_size: int) -> None:
        super().__init__(name, virtio_id, *pci_class, irq, device_config)
        self.features = features | 1 << VIRTIO_F_VERSION_1
        self.queues = [Virtqueue(qname, ram, ram_size) for qname, _ in queues]
        self.services = [service for _, service in queues]
        self.interrupt: Callable[[int], object] = lambda irq: None
        self.lock = threading.Lock()  # the vCPU and the service threads share this device
        self.threads: list[threading.Thread] = []
        self.running = False
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_feature_select = 0
        self.guest_feature_select = 0
        self.features_accepted = 0
        self.wrote_features_ok = False
        self.queue_select = 0
        self.isr = 0

    # --- reset and the service threads ---------------------------------------------------
    def reset(self) -> None:
        """Status 0: stop the service threads, forget features, disable the queues.

        Never called with `lock` held: the threads being stopped may be waiting for it.
        They finish the chain in hand first, so the queues are reset only after they end.
        """
        self.stop()
        with self.lock:
            self._reset_registers()
            for queue in self.queues:
                queue.reset()

    def stop(self) -> None:
        self.running = False
        for queue in self.queues:
            queue.notified.set()
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=STOP_TIMEOUT)
        self.threads = []

    def _start_queues(self) -> None:
        self.running = True
        for queue, service in zip(self.queues, self.services, strict=True):
            if queue.enabled:
                queue.indirect = bool(self.features_accepted >> VIRTIO_RING_F_INDIRECT_DESC & 1)
                thread = threading.Thread(target=self._serve, args=(service, queue), daemon=True,
                                          name=f"lguest-{self.name}-{queue.name}")
                self.threads.append(thread)
                thread.start()

    def _serve(self, service: QueueService, queue: Virtqueue) -> None:
        """A queue's service thread: whatever goes wrong in it ends the Guest, with a reason
        (a thread that died quietly would leave the Guest waiting for ever)."""
        try:
            service(self, queue)
        except BadDriver as err:
            self.fatal(f"{self.name} vq {queue.name}: bad driver: {err}")
        except OSError as err:
            self.fatal(f"{self.name}: {err.strerror or err}")
        except Exception as err:  # noqa: BLE001 - our bug, but the Guest must not hang on it
            self.fatal(f"{self.name}: {type(err).__name__}: {err}")

    def signal(self, queue: Virtqueue) -> None:
        """Tell the Guest a queue has used buffers, unless it asked not to be told."""
        if queue.wants_interrupt():
            with self.lock:
                self.isr |= 1
            self.interrupt(self.irq)

    # --- BAR0: the common configuration ---------------------------------------------------
    def _field(self, offset: int, size: int, write: bool) -> str:
        reg = COMMON.get(offset)
        if offset == abi.VirtioMmio.ISR + 1:
            self.bad_driver("read from padding")
        if reg is None:
            self.bad_driver(f"Unexpected {'write to' if write else 'read of'} offset {offset}")
        name, width = reg
        if size != width:
            self.bad_driver(f"non-{8 * width}-bit {'write to' if write else 'read to'} offset {offset}")
        return name

    def transport_read(self, offset: int, size: int) -> int:
        with self.lock:
            return self._read(self._field(offset, size, write=False))

    def _read(self, name: str) -> int:
        queue = self._selected()
        if name in ("device_feature_select", "device_feature", "guest_feature_select", "guest_feature"):
            if not self.status & DRIVER:
                self.bad_driver("feature read before VIRTIO_CONFIG_S_DRIVER")
            if name == "device_feature":
                return self.features >> 32 * self.device_feature_select & 0xFFFFFFFF \
                    if self.device_feature_select < 2 else 0
            if name == "guest_feature":
                return self.features_accepted >> 32 * self.guest_feature_select & 0xFFFFFFFF
            return getattr(self, name)
        if name == "msix_config":
            self.bad_driver("read of msix_config")
        if name == "num_queues":
            return len(self.queues)
        if name == "device_status":
            self.wrote_features_ok = False  # they read it: FEATURES_OK is confirmed
            return self.status
        if name == "notify":
            if not self.status & DRIVER_OK:
                self.bad_driver("notify before VIRTIO_CONFIG_S_DRIVER_OK")
            return 0
        if name == "isr":
            isr, self.isr = self.isr, 0
            return isr
        if name in ("config_generation", "queue_notify_off", "queue_msix_vector"):
            return 0
        if name == "queue_select":
            return self.queue_select
        if queue is None:
            return 0
        if name == "queue_size":
            return queue.size
        if name == "queue_enable":
            return int(queue.enabled)
        part, high = QUEUE_ADDRESSES[name]
        return 0 if high else getattr(queue, part)

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def transport_write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            name = self._field(offset, size, write=True)
            resetting = name == "device_status" and value == 0
            if not resetting:
                self._write(name, offset, value)
        if resetting:  # once the lock is free: the threads being stopped may need it
            self.reset()

    def _write(self, name: str, offset: int, value: int) -> None:
        queue = self._selected()
        if name == "device_feature_select":
            self._feature_write()
            self.device_feature_select = value
        elif name == "guest_feature_select":
            if value > 1:
                self.bad_driver(f"Unexpected driver select {value}")
            self._feature_write()
            self.guest_feature_select = value
        elif name == "guest_feature":
            self._feature_write()
            shift = 32 * self.guest_feature_select
            accepted = self.features_accepted & ~(0xFFFFFFFF << shift) | value << shift
            if accepted & ~self.features:
                self.bad_driver(f"over-accepted features {accepted:#x} of {self.features:#x}")
            self.features_accepted = accepted
        elif name == "device_status":
            self._status_write(value)
        elif name == "queue_select":
            self.queue_select = value
        elif name == "queue_size":
            if value & (value - 1) or not 0 < value <= DEFAULT_SIZE:
                self.bad_driver(f"invalid queue size {value}")
            elif queue is not None and queue.enabled:
                self.bad_driver("changing queue size on live device")
            elif queue is not None:
                queue.size = value
        elif name in ("queue_msix_vector", "msix_config"):
            self.bad_driver(f"attempt to set MSIX vector to {value}")
        elif name == "queue_enable":
            self._enable_queue(queue, value)
        elif name == "queue_notify_off":
            self.bad_driver("attempt to write to queue_notify_off")
        elif name in QUEUE_ADDRESSES:
            self._queue_address(queue, name, value)
        elif name == "notify":
            if value >= len(self.queues):
                self.bad_driver(f"Invalid vq notification on {value}")
            else:
                self.queues[value].notified.set()
        elif name == "isr":
            self.bad_driver("Unexpected write to isr")
        else:
            self.bad_driver(f"Unexpected write to offset {offset}")

    def _feature_write(self) -> None:
        if not self.status & DRIVER:
            self.bad_driver("feature write before VIRTIO_CONFIG_S_DRIVER")
        elif self.status & FEATURES_OK:
            self.bad_driver("feature write after VIRTIO_CONFIG_S_FEATURES_OK")

    def _status_write(self, value: int) -> None:
        if self.status & ~value:
            self.bad_driver(f"unset of device status bit {self.status:#x} -> {value:#x}")
        added = value & ~self.status
        if added not in STATUS_STEPS:
            self.bad_driver(f"unknown device status bit {self.status:#x} -> {value:#x}")
        if self.status != STATUS_STEPS[added]:
            self.bad_driver(f"unexpected status transition {self.status:#x} -> {value:#x}")
        if added == DRIVER_OK and self.wrote_features_ok:
            self.bad_driver("did not re-read FEATURES_OK")
        self.wrote_features_ok = added == FEATURES_OK
        self.status = value
        if added == DRIVER_OK:
            self._start_queues()

    def _enable_queue(self, queue: Virtqueue | None, value: int) -> None:
        if value != 1:
            self.bad_driver(f"setting queue_enable to {value}")
        elif self.status & DRIVER_OK:
            self.bad_driver("enabling vq after DRIVER_OK")
        elif queue is not None:
            try:
                queue.check()
            except BadDriver as err:
                self.refuse(f"{self.name} vq {queue.name}: bad driver: {err}")
            queue.enabled = True

    def _queue_address(self, queue: Virtqueue | None, name: str, value: int) -> None:
        if queue is not None and queue.enabled:
            self.bad_driver("changing queue on live device")
        elif not self.status & FEATURES_OK:
            self.bad_driver("setting up vq before FEATURES_OK")
        elif self.wrote_features_ok:
            self.bad_driver("didn't re-read FEATURES_OK before setup")
        elif queue is not None:
            part, high = QUEUE_ADDRESSES[name]
            if high:
                queue.high |= value
            else:
                setattr(queue, part, value)

    # --- BAR0: device config ----------------------------------------------------------------
    def bar0_read(self, offset: int, size: int) -> int:
        if offset >= abi.VirtioMmio.DEVICE and not self.status & DRIVER:
            self.bad_driver("config read before VIRTIO_CONFIG_S_DRIVER")
        return super().bar0_read(offset, size)


def wait_for_chains(device: VirtioDevice, queue: Virtqueue, poll: float = 0.1) -> Iterator[Chain]:
    """A service thread's loop: each chain the Guest makes available, until reset.

    Between chains it sleeps until the Guest notifies the queue (or `poll` seconds
    pass, to notice a reset).
    """
    while device.running:
        with device.lock:
            chain = queue.pop() if queue.enabled else None
        if chain is not None:
            yield chain
            continue
        queue.notified.wait(poll)
        queue.notified.clear()
