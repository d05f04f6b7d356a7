"""`--trace-file`: the run as a Chrome trace-event JSON (Perfetto, chrome://tracing).

One process, two tracks for the vCPU: "Guest" holds a slice for every stretch
the Guest ran inside the emulator, "Host" a slice for the work each exit caused
(named for the hypercall, trap or fault).  Hypercalls (with their arguments),
traps (vector, error code, address) and interrupts are instant events on the
Host track; a "devices" track shows each request a device takes from a
virtqueue, with the bytes the Guest offered it to read and to fill; counters
give exits and page faults served (TLB fills) per second.

Like the tracer protocol it is built on, the timeline needs nothing from the
Host but its running totals (seconds emulating, TLB fills), read at each exit.

A long run must not grow the file without bound: only the last `LIMIT` events
are kept (a ring), and the document records how many were dropped and the
totals of the whole run, so the kept events are a true tail of it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

from lguest import abi
from lguest.debug.census import TRAP_NAMES, exit_category, hcall_name
from lguest.host.core import Guest
from lguest.host.switcher import Exit, ExitKind
from lguest.launcher.virtio.queue import Chain
from lguest.launcher.virtio.transport import VirtioDevice

LIMIT = 200_000  # events kept: about 20 MB of JSON
COUNTER_PERIOD = 0.1  # seconds per sample of the rate counters
PID = 1
GUEST_TID, HOST_TID, DEVICE_TID = 1, 2, 3


class Timeline:
    def __init__(self, limit: int = LIMIT) -> None:
        self.events: deque[dict[str, object]] = deque(maxlen=limit)
        self.recorded: Counter[str] = Counter()  # events made, by category, kept or not
        self._lock = threading.Lock()  # device threads may record too
        self._origin = time.perf_counter()
        self._host_began: float | None = None  # the Host's slice for the previous exit
        self._host_name = ""
        self._emulated = 0.0
        self._sample: tuple[float, int, int] | None = None  # (when, exits, fills) last counted
        self._exits = 0

    def _us(self, when: float) -> float:
        return round((when - self._origin) * 1e6, 3)

    def _add(self, event: dict[str, object]) -> None:
        with self._lock:
            self.events.append(event | {"pid": PID})
            self.recorded[str(event.get("cat", event["ph"]))] += 1

    def _instant(self, name: str, cat: str, args: dict[str, object]) -> None:
        self._add({"name": name, "cat": cat, "ph": "i", "s": "t", "tid": HOST_TID,
                   "ts": self._us(time.perf_counter()), "args": args})

    # --- the tracer protocol -------------------------------------------------------------------
    def trap(self, guest: Guest, exit_: Exit) -> None:
        now = time.perf_counter()
        inside = guest.switcher.emulating + guest.switcher.in_hooks  # the Guest's slice: hooks and all
        ran = inside - self._emulated
        self._emulated = inside
        entered = now - ran
        if self._host_began is not None:
            self._slice(self._host_name, "host", HOST_TID, self._host_began, max(entered, self._host_began))
        self._slice("Guest", "guest", GUEST_TID, entered, now)
        self._exits += 1
        category = exit_category(guest, exit_)
        self._host_began, self._host_name = now, category
        if category in ("trap", "page fault"):
            self._trap_event(guest, exit_)
        self._count(now, guest.switcher.fills)

    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None:
        name = hcall_name(args[0])
        if not queued:
            self._host_name = name
        self._instant(name, "hypercall", {"args": [f"{a:#x}" for a in args[1:]], "async": queued})

    def irq(self, guest: Guest, irq: int) -> None:
        self._instant(f"irq {irq}", "interrupt", {"irq": irq, "vector": abi.FIRST_EXTERNAL_VECTOR + irq})

    def watch_device(self, device: VirtioDevice) -> None:
        """Record every request the device takes from its queues (on its own threads)."""
        for queue in device.queues:
            name = f"{device.name} {queue.name}"
            queue.on_request = lambda chain, name=name: self._request(name, chain)

    def _request(self, name: str, chain: Chain) -> None:
        self._add({"name": name, "cat": "device", "ph": "i", "s": "t", "tid": DEVICE_TID,
                   "ts": self._us(time.perf_counter()),
                   "args": {"out_bytes": sum(len(b) for b in chain.out),
                            "in_bytes": sum(len(b) for b in chain.into)}})

    def _trap_event(self, guest: Guest, exit_: Exit) -> None:
        eip = guest.switcher.get("eip")
        if exit_.kind is ExitKind.PAGE_FAULT:
            self._instant("#PF", "trap", {"vector": abi.Trap.PF, "cr2": f"{exit_.address:#x}",
                                          "errcode": f"{exit_.errcode:#x}", "eip": f"{eip:#x}"})
            return
        name = TRAP_NAMES.get(exit_.trapnum, f"int {exit_.trapnum:#x}")
        self._instant(name, "trap", {"vector": exit_.trapnum, "errcode": f"{exit_.errcode:#x}",
                                     "eip": f"{eip:#x}"})

    def _slice(self, name: str, cat: str, tid: int, begin: float, end: float) -> None:
        self._add({"name": name, "cat": cat, "ph": "X", "tid": tid, "ts": self._us(begin),
                   "dur": round((end - begin) * 1e6, 3)})

    def _count(self, now: float, fills: int) -> None:
        if self._sample is None:
            self._sample = (now, self._exits, fills)
            return
        when, exits, filled = self._sample
        if now - when < COUNTER_PERIOD:
            return
        seconds = now - when
        self._add({"name": "exits/s", "cat": "counter", "ph": "C", "ts": self._us(now),
                   "args": {"exits": round((self._exits - exits) / seconds)}})
        self._add({"name": "faults/s", "cat": "counter", "ph": "C", "ts": self._us(now),
                   "args": {"page faults served": round((fills - filled) / seconds)}})
        self._sample = (now, self._exits, fills)

    # --- the file ------------------------------------------------------------------------------
    def document(self, figures: dict[str, object]) -> dict[str, object]:
        """The trace-event JSON object: events, track names, and what was left out."""
        names = [{"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "lguest"}},
                 {"name": "thread_name", "ph": "M", "pid": PID, "tid": GUEST_TID, "args": {"name": "Guest"}},
                 {"name": "thread_name", "ph": "M", "pid": PID, "tid": HOST_TID, "args": {"name": "Host"}},
                 {"name": "thread_name", "ph": "M", "pid": PID, "tid": DEVICE_TID,
                  "args": {"name": "devices (requests taken, by virtqueue)"}}]
        with self._lock:
            kept = list(self.events)
            recorded = dict(self.recorded)
        dropped = sum(recorded.values()) - len(kept)
        return {"traceEvents": names + kept, "displayTimeUnit": "ms",
                "otherData": {"limit": self.events.maxlen, "dropped_events": dropped,
                              "recorded_by_category": recorded, "stats": figures}}
