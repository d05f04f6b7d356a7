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
from enum import IntEnum

from lguest import abi
from lguest.launcher.pci import BadDriver, HostLink, VirtioPciDevice
from lguest.launcher.virtio.queue import VIRTIO_RING_F_INDIRECT_DESC, Chain, Virtqueue, check_size

VIRTIO_F_VERSION_1 = 32
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
# The one step each status bit may complete (the bits that must already be set).
STATUS_STEPS = {ACKNOWLEDGE: 0, DRIVER: ACKNOWLEDGE, FEATURES_OK: ACKNOWLEDGE | DRIVER,
                DRIVER_OK: ACKNOWLEDGE | DRIVER | FEATURES_OK}
# Every status the handshake can reach (a snapshot holds one of these).
REACHABLE_STATUSES = frozenset({*STATUS_STEPS.values(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK})


# tour:D.60 The common configuration
# Every virtio device shares these registers; each has one offset and one width, and an
# access of the wrong width, or to an offset that names no register, ends the Guest with
# `<dev>: bad driver: ...`, as the 4.x Launcher did.  `_read` and `_write` dispatch on them
# with one `match` each, under the device's lock: the vCPU and the device's service
# threads both touch this state.
class Common(IntEnum):
    """BAR0 below the device config: struct virtio_pci_common_cfg, then notify and ISR.

    Each register is its offset, and carries the one access width it allows.
    """

    width: int

    def __new__(cls, offset: int, width: int) -> Common:
        register = int.__new__(cls, offset)
        register._value_ = offset
        register.width = width
        return register

    DEVICE_FEATURE_SELECT = 0, 4
    DEVICE_FEATURE = 4, 4
    GUEST_FEATURE_SELECT = 8, 4
    GUEST_FEATURE = 12, 4
    MSIX_CONFIG = 16, 2
    NUM_QUEUES = 18, 2
    DEVICE_STATUS = 20, 1
    CONFIG_GENERATION = 21, 1
    QUEUE_SELECT = 22, 2
    QUEUE_SIZE = 24, 2
    QUEUE_MSIX_VECTOR = 26, 2
    QUEUE_ENABLE = 28, 2
    QUEUE_NOTIFY_OFF = 30, 2
    QUEUE_DESC_LO = 32, 4
    QUEUE_DESC_HI = 36, 4
    QUEUE_AVAIL_LO = 40, 4
    QUEUE_AVAIL_HI = 44, 4
    QUEUE_USED_LO = 48, 4
    QUEUE_USED_HI = 52, 4
    NOTIFY = abi.VirtioMmio.NOTIFY, 2
    ISR = abi.VirtioMmio.ISR, 1


# The ring addresses: which ring each register sets, and whether it is the (always 0) high half.
RING_ADDRESSES = {Common.QUEUE_DESC_LO: ("desc", False), Common.QUEUE_DESC_HI: ("desc", True),
                  Common.QUEUE_AVAIL_LO: ("avail", False), Common.QUEUE_AVAIL_HI: ("avail", True),
                  Common.QUEUE_USED_LO: ("used", False), Common.QUEUE_USED_HI: ("used", True)}

STOP_TIMEOUT = 2.0  # seconds: a hang guard; a service thread notices a stop within 0.1 s
POLL_SECONDS = 0.1  # how often an idle service thread looks for a reset
QueueService = Callable[[Virtqueue], None]


class VirtioDevice(VirtioPciDevice):
    """A virtio device: its features, status, queues and their service threads."""

    def __init__(self, name: str, virtio_id: int, pci_class: tuple[int, int], irq: int,
                 device_config: bytes, features: int, queues: list[tuple[str, QueueService]],
                 ram: mmap.mmap, ram_size: int, host: HostLink) -> None:
        """`queues` names each queue and the method that serves it (in its own thread)."""
        super().__init__(name, virtio_id, *pci_class, irq, device_config, host)
        self.features = features | 1 << VIRTIO_F_VERSION_1
        self.queues = [Virtqueue(qname, ram, ram_size) for qname, _ in queues]
        self.services = [service for _, service in queues]
        self.interrupt = host.interrupt
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

    # --- BAR0: the common configuration ---------------------------------------------------
    def _register(self, offset: int, size: int, write: bool) -> Common:
        """The register an access names, at the width it allows, or the Guest is refused."""
        if offset == abi.VirtioMmio.ISR + 1:
            self.bad_driver("read from padding")
        try:
            reg = Common(offset)
        except ValueError:
            self.bad_driver(f"Unexpected {'write to' if write else 'read of'} offset {offset}")
        if size != reg.width:
            self.bad_driver(f"non-{8 * reg.width}-bit {'write to' if write else 'read to'} offset {offset}")
        return reg

    def transport_read(self, offset: int, size: int) -> int:
        with self.lock:
            return self._read(self._register(offset, size, write=False))

    def _read(self, reg: Common) -> int:
        queue = self._selected()
        match reg:
            case Common.DEVICE_FEATURE_SELECT | Common.DEVICE_FEATURE | Common.GUEST_FEATURE_SELECT \
                    | Common.GUEST_FEATURE:
                return self._feature_read(reg)
            case Common.MSIX_CONFIG:
                self.bad_driver("read of msix_config")
            case Common.NUM_QUEUES:
                return len(self.queues)
            case Common.DEVICE_STATUS:
                self.wrote_features_ok = False  # they read it: FEATURES_OK is confirmed
                return self.status
            case Common.NOTIFY:
                if not self.status & DRIVER_OK:
                    self.bad_driver("notify before VIRTIO_CONFIG_S_DRIVER_OK")
                return 0
            case Common.ISR:
                isr, self.isr = self.isr, 0
                return isr
            case Common.CONFIG_GENERATION | Common.QUEUE_NOTIFY_OFF | Common.QUEUE_MSIX_VECTOR:
                return 0
            case Common.QUEUE_SELECT:
                return self.queue_select
            case _ if queue is None:
                return 0
            case Common.QUEUE_SIZE:
                return queue.size
            case Common.QUEUE_ENABLE:
                return int(queue.enabled)
            case _:
                ring, high = RING_ADDRESSES[reg]
                return 0 if high else getattr(queue, ring)

    def _feature_read(self, reg: Common) -> int:
        if not self.status & DRIVER:
            self.bad_driver("feature read before VIRTIO_CONFIG_S_DRIVER")
        if reg is Common.DEVICE_FEATURE:
            select = self.device_feature_select
            return self.features >> 32 * select & 0xFFFFFFFF if select < 2 else 0
        if reg is Common.GUEST_FEATURE:
            return self.features_accepted >> 32 * self.guest_feature_select & 0xFFFFFFFF
        if reg is Common.DEVICE_FEATURE_SELECT:
            return self.device_feature_select
        return self.guest_feature_select

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def transport_write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            reg = self._register(offset, size, write=True)
            resetting = reg is Common.DEVICE_STATUS and value == 0
            if not resetting:
                self._write(reg, value)
        if resetting:  # once the lock is free: the threads being stopped may need it
            self.reset()

    def _write(self, reg: Common, value: int) -> None:
        queue = self._selected()
        match reg:
            case Common.DEVICE_FEATURE_SELECT:
                self._feature_write()
                self.device_feature_select = value
            case Common.GUEST_FEATURE_SELECT:
                if value > 1:
                    self.bad_driver(f"Unexpected driver select {value}")
                self._feature_write()
                self.guest_feature_select = value
            case Common.GUEST_FEATURE:
                self._accept_features(value)
            case Common.DEVICE_STATUS:
                self._status_write(value)
            case Common.QUEUE_SELECT:
                self.queue_select = value
            case Common.QUEUE_SIZE:
                self._resize_queue(queue, value)
            case Common.QUEUE_MSIX_VECTOR | Common.MSIX_CONFIG:
                self.bad_driver(f"attempt to set MSIX vector to {value}")
            case Common.QUEUE_ENABLE:
                self._enable_queue(queue, value)
            case Common.QUEUE_NOTIFY_OFF:
                self.bad_driver("attempt to write to queue_notify_off")
            case _ if reg in RING_ADDRESSES:
                self._queue_address(queue, reg, value)
            case Common.NOTIFY:
                if value >= len(self.queues):
                    self.bad_driver(f"Invalid vq notification on {value}")
                self.queues[value].notified.set()
            case Common.ISR:
                self.bad_driver("Unexpected write to isr")
            case _:
                self.bad_driver(f"Unexpected write to offset {int(reg)}")

    def _accept_features(self, value: int) -> None:
        self._feature_write()
        shift = 32 * self.guest_feature_select
        accepted = self.features_accepted & ~(0xFFFFFFFF << shift) | value << shift
        if accepted & ~self.features:
            self.bad_driver(f"over-accepted features {accepted:#x} of {self.features:#x}")
        self.features_accepted = accepted

    def _feature_write(self) -> None:
        if not self.status & DRIVER:
            self.bad_driver("feature write before VIRTIO_CONFIG_S_DRIVER")
        elif self.status & FEATURES_OK:
            self.bad_driver("feature write after VIRTIO_CONFIG_S_FEATURES_OK")

    # tour:D.70 The handshake
    # A driver brings a device up in four steps, each one status bit: ACKNOWLEDGE (I see you),
    # DRIVER (I can drive you), then it reads the device's feature bits and writes the ones it
    # accepts, FEATURES_OK (and reads the status back, to see we agreed), and after setting up
    # its queues, DRIVER_OK.  Bits are only ever added, one step at a time and in this order;
    # writing 0 resets the device.  We hold a driver to all of it, because a Guest driver that
    # skips a step would break on a real device too.
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

    # tour:D.80 Setting up a queue
    # Between FEATURES_OK and DRIVER_OK the driver sets up each queue: select it, choose a
    # size, write the Guest-physical addresses of its three rings (descriptors, avail, used),
    # then enable it.  The enable is the moment of truth: `Virtqueue.check` makes sure the
    # rings are aligned and lie wholly inside Guest RAM, so that from now on the device may
    # trust where they are (the rules are written at the top of queue.py).
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

    def _resize_queue(self, queue: Virtqueue | None, value: int) -> None:
        try:
            check_size(value)
        except BadDriver as err:
            self.bad_driver(str(err))
        if queue is not None and queue.enabled:
            self.bad_driver("changing queue size on live device")
        if queue is not None:
            queue.size = value

    def _queue_address(self, queue: Virtqueue | None, reg: Common, value: int) -> None:
        if queue is not None and queue.enabled:
            self.bad_driver("changing queue on live device")
        elif not self.status & FEATURES_OK:
            self.bad_driver("setting up vq before FEATURES_OK")
        elif self.wrote_features_ok:
            self.bad_driver("didn't re-read FEATURES_OK before setup")
        elif queue is not None:
            ring, high = RING_ADDRESSES[reg]
            if high:
                queue.high |= value
            else:
                setattr(queue, ring, value)

    # --- BAR0: device config ----------------------------------------------------------------
    def bar0_read(self, offset: int, size: int) -> int:
        if offset >= abi.VirtioMmio.DEVICE and not self.status & DRIVER:
            self.bad_driver("config read before VIRTIO_CONFIG_S_DRIVER")
        return super().bar0_read(offset, size)

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

    # --- snapshots ----------------------------------------------------------------------
    # A snapshot is taken with every service thread stopped (`pause`): a request in hand
    # is finished first, and one a thread was still waiting to fill (console input, a
    # network frame) is given back to the ring, so nothing is half done and nothing lost.
    def pause(self) -> None:
        """Stop serving the queues until `resume`: the rings hold still for a snapshot."""
        self.stop()

    def resume(self) -> None:
        """Serve the queues again, if the driver had brought the device up."""
        if self.status & DRIVER_OK and not self.running:
            self._start_queues()

    def save_state(self) -> dict[str, object]:
        """The transport's registers, the queues, and the PCI config space (after `pause`)."""
        with self.lock:
            return {"name": self.name, "status": self.status,
                    "device_feature_select": self.device_feature_select,
                    "guest_feature_select": self.guest_feature_select,
                    "features_accepted": self.features_accepted, "queue_select": self.queue_select,
                    "isr": self.isr, "pci_config": self.config.hex(),
                    "queues": [queue.save_state() for queue in self.queues]}

    def restore_state(self, state: dict) -> None:
        """Become the device `state` was saved from; then serve its queues (BadDriver if
        the state is not one a driver could have left)."""
        if state["name"] != self.name or len(state["queues"]) != len(self.queues):
            raise BadDriver(f"saved device {state['name']} is not {self.name}")
        accepted = int(state["features_accepted"])
        if accepted & ~self.features or int(state["status"]) not in REACHABLE_STATUSES:
            raise BadDriver("saved status or features this device never offered")
        config = bytes.fromhex(state["pci_config"])
        if len(config) != len(self.config):
            raise BadDriver("saved PCI config of the wrong size")
        self.status, self.features_accepted = int(state["status"]), accepted
        self.device_feature_select = int(state["device_feature_select"])
        self.guest_feature_select = int(state["guest_feature_select"])
        self.queue_select, self.isr = int(state["queue_select"]), int(state["isr"])
        self.config[:] = config
        for queue, saved in zip(self.queues, state["queues"], strict=True):
            queue.restore_state(saved)
        self.resume()

    def close(self) -> None:
        """Release what the device holds on the host (a file, a socket): after `stop`."""

    def release_ram(self) -> None:
        """Let go of Guest RAM, so the machine can unmap it: after `stop`."""
        for queue in self.queues:
            queue.close()

    # tour:D.90 DRIVER_OK: a thread per queue, woken by a notify
    # As in lguest 4.x, every enabled queue gets its own service thread, so the vCPU never
    # waits for a disk or a keyboard: it only stores a register and goes on running.  When
    # the Guest has put requests in a queue it writes the queue's number to the notify
    # register; `_write` sets that queue's event, and the thread in `chains` wakes up, takes
    # each new request under the device's lock, and gives it to the device's method (the
    # `queues` the device listed when it was made).  Anything that goes wrong in the thread
    # ends the Guest with a reason: a thread that died in silence would leave it waiting
    # for ever.
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
            service(queue)
        except BadDriver as err:
            self.fatal(f"{self.name} vq {queue.name}: bad driver: {err}")
        except OSError as err:
            self.fatal(f"{self.name}: {err.strerror or err}")
        except Exception as err:  # noqa: BLE001 - our bug, but the Guest must not hang on it
            self.fatal(f"{self.name}: {type(err).__name__}: {err}")

    def chains(self, queue: Virtqueue) -> Iterator[Chain]:
        """A service thread's loop: each chain the Guest makes available, until reset.

        Between chains it sleeps until the Guest notifies the queue (or a poll interval
        passes, to notice a reset).
        """
        while self.running:
            with self.lock:
                chain = queue.pop() if queue.enabled else None
            if chain is not None:
                yield chain
                continue
            queue.notified.wait(POLL_SECONDS)
            queue.notified.clear()

    # tour:D.120 An interrupt, back to the Guest
    # Unless the Guest asked for quiet (VRING_AVAIL_F_NO_INTERRUPT), a device with used
    # buffers sets its ISR bit and calls the Host's `interrupt(irq)`: the irq is marked
    # pending and the vCPU's doorbell rung, since this is another thread.  The vCPU leaves the
    # emulator at its next block, the run loop sees the irq, and when the Guest has interrupts
    # enabled the Host delivers it through the Guest's IDT (chapter H).  The driver reads ISR,
    # which clears it, and collects the finished requests from the used ring.
    def signal(self, queue: Virtqueue) -> None:
        """Tell the Guest a queue has used buffers, unless it asked not to be told."""
        if queue.wants_interrupt():
            with self.lock:
                self.isr |= 1
            self.interrupt(self.irq)
