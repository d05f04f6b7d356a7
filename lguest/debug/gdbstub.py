"""`--gdb`: a gdb remote-protocol stub that sees the Guest as the Guest sees itself.

Two threads share the work.  A socket thread accepts one gdb at a time, turns its
bytes into packets (`rsp`), acknowledges them and queues them; a Ctrl-C from gdb
only asks the vCPU to stop.  Everything that touches the Guest happens on the
vCPU thread, at the run loop's safe point (`Guest.debugger`), where the Guest's
registers are its own (ring 1 or 3, never the Switcher's): there the stub sends
the stop reply and answers packets until gdb resumes.

Breakpoints (software and hardware alike) and single steps are emulator code
hooks, so nothing is ever written into the Guest and a step can never land in
the Switcher's pages: the step hook covers Guest addresses only, so an
instruction that enters the Host (a hypercall, a trap, a fault) completes all
the Host's work and the step stops at the next Guest instruction.  While a step
is under way interrupts wait (as QEMU's stub does by default), so `stepi` does
not wander into the timer handler.  Watchpoints (writes) are store hooks; the
stop comes before the next Guest instruction, as on x86 hardware.

A second gdb is refused by closing its connection; a gdb that goes away is a
detach: its breakpoints go and the Guest runs on.  While the Guest is stopped the
vCPU thread waits for packets in short slices, so a Guest killed meanwhile (the
console's escape keys, a device's fatal error) still ends the run.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading

from lguest import abi
from lguest.debug import monitor, rsp
from lguest.debug.target import GENERAL, SEGMENTS, SIZES, TARGET_XML
from lguest.host.core import Guest
from lguest.host.switcher import Exit, ExitKind

SIGINT, SIGTRAP = 2, 5
GUEST_TOP = abi.SWITCHER_ADDR - 1  # the highest address a Guest instruction may have
# EFLAGS bits gdb may change: the arithmetic flags, never IF, IOPL or the mode bits.
WRITABLE_EFLAGS = 0x8D5 | 0x400
POLL_SECONDS = 0.1  # how often a stopped Guest looks whether it was killed meanwhile
EFAULT, EINVAL = "E0e", "E16"


class GdbStub:
    def __init__(self, host: str, port: int, wait: bool, census: monitor.Census) -> None:
        self.server = socket.create_server((host, port))
        self.address = self.server.getsockname()[:2]
        self.census = census
        self.guest: Guest | None = None
        self._send_lock = threading.Lock()
        self._packets: queue.Queue[bytes | None] = queue.Queue()  # None: that gdb went away
        self._client: socket.socket | None = None
        self._noack = False
        self._last_sent = b""
        self._stop_wanted = wait
        self._serving = False  # the Guest is stopped and we answer gdb
        self._gdb_waits = False  # gdb resumed the Guest and waits for a stop reply
        self._stop_reply = f"S{SIGTRAP:02x}"
        self._breaks: dict[tuple[int, int], int | None] = {}  # (kind, addr) -> hook
        self._watches: dict[tuple[int, int], int | None] = {}  # (addr, len) -> hook
        self._insn_hook: int | None = None
        self._step_from: int | None = None
        self._step_began = False
        self._watch_hit: int | None = None
        self.break_hcalls: set[int] = set()
        self.break_traps: set[int] = set()
        threading.Thread(target=self._accept, name="lguest-gdb", daemon=True).start()

    # --- the Guest's side ---------------------------------------------------------------------
    def attach(self, guest: Guest) -> None:
        """A (re)built Guest: its CPU gets the breakpoints and watchpoints gdb set."""
        self.guest = guest
        guest.debugger = self
        self._insn_hook = None
        for key in self._breaks:
            self._breaks[key] = guest.switcher.watch_code(key[1], key[1], self._on_break)
        watches, self._watches = self._watches, {}
        for addr, length in watches:
            self._watch(guest, addr, length)
        self._update_insn_hook()

    @property
    def wants_stop(self) -> bool:
        return self._stop_wanted

    @property
    def holds_interrupts(self) -> bool:
        return self._step_from is not None

    def safe_point(self, guest: Guest) -> None:
        if not self._stop_wanted:
            return
        self._stop_wanted = False
        self._step_from = None
        self._watch_hit = None
        self._update_insn_hook()
        if self._gdb_waits:
            self._gdb_waits = False
            self._send(self._stop_reply.encode())
        self._serving = True
        try:
            self._serve(guest)
        finally:
            self._serving = False

    def finished(self, status: int) -> None:
        """The Guest's run is over: tell gdb how it exited, and let it go."""
        if self._gdb_waits:
            self._send(b"W%02x" % status)
        self._drop_client()
        self.server.close()

    def _stop(self, reply: str, even_while_serving: bool = False) -> None:
        """Stop at the next safe point (once: the first reason is the one gdb hears)."""
        if not self._stop_wanted and (even_while_serving or not self._serving):
            self._stop_reply = reply
            self._stop_wanted = True

    # The tracer protocol: `monitor break hcall/trap` stop here, once the Host has done its work.
    def hcall(self, guest: Guest, args: tuple[int, ...], queued: bool) -> None:
        if args[0] in self.break_hcalls:
            self._stop(f"T{SIGTRAP:02x}")

    def trap(self, guest: Guest, exit_: Exit) -> None:
        if exit_.kind is not ExitKind.KICKED and exit_.trapnum in self.break_traps:
            self._stop(f"T{SIGTRAP:02x}")

    def irq(self, guest: Guest, irq: int) -> None:
        pass

    # --- hooks, called inside the emulator ----------------------------------------------------
    def _on_break(self, eip: int) -> None:
        self._stop(f"T{SIGTRAP:02x}swbreak:;")
        self._pause()

    def _on_write(self, vaddr: int) -> None:
        if self._watch_hit is None:
            self._watch_hit = vaddr

    def _on_insn(self, eip: int) -> None:
        """Before every Guest instruction while stepping or watching."""
        if self._watch_hit is not None:
            self._stop(f"T{SIGTRAP:02x}watch:{self._watch_hit:x};")
            self._pause()
        elif self._step_from is not None:
            if eip == self._step_from and not self._step_began:
                self._step_began = True  # the instruction being stepped: let it run
                return
            self._stop(f"T{SIGTRAP:02x}")
            self._pause()

    def _pause(self) -> None:
        assert self.guest is not None
        self.guest.switcher.pause()

    def _update_insn_hook(self) -> None:
        """The every-instruction hook costs a call per instruction: only while needed."""
        if self.guest is None:
            return
        needed = self._step_from is not None or bool(self._watches)
        if needed and self._insn_hook is None:
            self._insn_hook = self.guest.switcher.watch_code(0, GUEST_TOP, self._on_insn)
        elif not needed and self._insn_hook is not None:
            self.guest.switcher.unwatch(self._insn_hook)
            self._insn_hook = None

    # --- serving gdb while the Guest is stopped -----------------------------------------------
    def _serve(self, guest: Guest) -> None:
        while not guest.dead:
            try:
                data = self._packets.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if data is None:
                self._forget_all(guest)  # gdb went away without a word: a detach
                self._stop_wanted = False
                return
            reply, resume = self._dispatch(guest, data)
            if reply is not None:
                self._send(reply)
            if resume:
                return

    def _dispatch(self, guest: Guest, data: bytes) -> tuple[bytes | None, bool]:
        """(reply or None for none, whether the Guest resumes)."""
        kind, body = chr(data[0]), data[1:]
        try:
            if kind in "cs":
                return None, self._resume(guest, kind == "s", body)
            if kind in "CS":
                _, _, addr = body.partition(b";")
                return None, self._resume(guest, kind == "S", addr)
            if kind == "D":
                self._forget_all(guest)
                self._send(b"OK")
                self._drop_client()
                return None, True
            if kind == "k":
                guest.kill("killed from gdb")
                self._drop_client()
                return None, True
            return self._answer(guest, kind, body), False
        except (ValueError, IndexError, struct.error):
            return EINVAL.encode(), False  # a malformed packet

    def _resume(self, guest: Guest, step: bool, addr: bytes) -> bool:
        if addr:
            guest.switcher.set("eip", int(addr, 16))
        if step:
            self._step_from, self._step_began = guest.switcher.get("eip"), False
            self._update_insn_hook()
        self._gdb_waits = True
        return True

    def _answer(self, guest: Guest, kind: str, body: bytes) -> bytes | None:
        handlers = {"g": self._read_registers, "G": self._write_registers, "p": self._read_register,
                    "P": self._write_register, "m": self._read_memory, "M": self._write_memory,
                    "Z": self._insert, "z": self._remove, "q": self._query, "Q": self._set}
        if kind == "?":
            return self._stop_reply.encode()
        if kind in "HT":
            return b"OK"  # one thread, always alive
        handler = handlers.get(kind)
        answer = handler(guest, body.decode("latin-1")) if handler else ""
        return answer if answer is None or isinstance(answer, bytes) else answer.encode("latin-1")

    # --- registers ----------------------------------------------------------------------------
    def _read_registers(self, guest: Guest, _: str) -> str:
        values = guest.switcher.get_many(GENERAL)
        return struct.pack(f"<{len(values)}I", *values).hex() + "xx" * sum(SIZES[len(GENERAL):])

    def _read_register(self, guest: Guest, text: str) -> str:
        n = int(text, 16)
        if n >= len(SIZES):
            return EINVAL
        if n >= len(GENERAL):
            return "xx" * SIZES[n]
        return struct.pack("<I", guest.switcher.get(GENERAL[n])).hex()

    def _write_registers(self, guest: Guest, text: str) -> str:
        raw = bytes.fromhex(text[:8 * len(GENERAL)])
        values = struct.unpack(f"<{len(GENERAL)}I", raw)
        for name, value in zip(GENERAL, values, strict=True):
            if not self._set_register(guest, name, value):
                return EINVAL
        return "OK"

    def _write_register(self, guest: Guest, text: str) -> str:
        number, _, value = text.partition("=")
        n = int(number, 16)
        if n >= len(GENERAL):
            return EINVAL
        (word,) = struct.unpack("<I", bytes.fromhex(value))
        return "OK" if self._set_register(guest, GENERAL[n], word) else EINVAL

    @staticmethod
    def _set_register(guest: Guest, name: str, value: int) -> bool:
        """Segment registers stay the Host's business (gdb may only write what they are)."""
        if name in SEGMENTS:
            return value == guest.switcher.get(name)
        if name == "eflags":
            value = guest.switcher.get("eflags") & ~WRITABLE_EFLAGS | value & WRITABLE_EFLAGS
        guest.switcher.set(name, value)
        return True

    # --- memory -------------------------------------------------------------------------------
    def _read_memory(self, guest: Guest, text: str) -> str:
        addr, _, length = text.partition(",")
        data = guest.peek_virtual(int(addr, 16), min(int(length, 16), rsp.PACKET_SIZE // 2))
        return data.hex() if data else EFAULT

    def _write_memory(self, guest: Guest, text: str) -> str:
        where, _, payload = text.partition(":")
        addr, _, length = where.partition(",")
        data = bytes.fromhex(payload)
        if len(data) != int(length, 16):
            return EINVAL
        return "OK" if guest.poke_virtual(int(addr, 16), data) else EFAULT

    # --- breakpoints and watchpoints ------------------------------------------------------------
    def _insert(self, guest: Guest, text: str) -> str:
        kind, addr, length = self._point(text)
        if kind in (0, 1):
            if addr > GUEST_TOP:
                return EINVAL
            if (kind, addr) not in self._breaks:
                self._breaks[(kind, addr)] = guest.switcher.watch_code(addr, addr, self._on_break)
            return "OK"
        if kind == 2:
            return "OK" if self._watch(guest, addr, length) else EINVAL
        return ""  # read and access watchpoints: not supported

    def _watch(self, guest: Guest, addr: int, length: int) -> bool:
        """A write watchpoint on the RAM the address maps to now (stores are seen
        by physical address), counted only while the address still maps there."""
        gpa = guest.peek_virtual_pa(addr)
        if gpa is None or not 0 < length <= abi.PAGE_SIZE - (addr & 0xFFF):
            return False
        if (addr, length) not in self._watches:
            def hit(_: int) -> None:
                if guest.peek_virtual_pa(addr) == gpa:
                    self._on_write(addr)
            self._watches[(addr, length)] = guest.switcher.watch_writes(gpa, gpa + length - 1, hit)
            self._update_insn_hook()
        return True

    def _remove(self, guest: Guest, text: str) -> str:
        kind, addr, length = self._point(text)
        hook = self._breaks.pop((kind, addr), None) if kind in (0, 1) else \
            self._watches.pop((addr, length), None) if kind == 2 else None
        if hook is not None:
            guest.switcher.unwatch(hook)
        self._update_insn_hook()
        return "OK" if kind in (0, 1, 2) else ""

    @staticmethod
    def _point(text: str) -> tuple[int, int, int]:
        kind, addr, length = text.split(";")[0].split(",")[:3]
        return int(kind), int(addr, 16), int(length, 16)

    def _forget_all(self, guest: Guest) -> None:
        for key in list(self._breaks):
            self._remove(guest, f"{key[0]},{key[1]:x},1")
        for addr, length in list(self._watches):
            self._remove(guest, f"2,{addr:x},{length:x}")
        self.break_hcalls.clear()
        self.break_traps.clear()

    # --- queries ------------------------------------------------------------------------------
    def _query(self, guest: Guest, text: str) -> str | bytes:
        name, _, args = text.partition(":")
        if name == "Supported":
            return (f"PacketSize={rsp.PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;"
                    "swbreak+;hwbreak+")
        if name == "Xfer" and args.startswith("features:read:target.xml:"):
            offset, _, length = args.rsplit(":", 1)[1].partition(",")
            start, size = int(offset, 16), int(length, 16)
            chunk = TARGET_XML[start:start + size]
            return (b"l" if start + size >= len(TARGET_XML) else b"m") + chunk
        if name == "Attached":
            return "1"
        if name == "fThreadInfo":
            return "m1"
        if name == "sThreadInfo":
            return "l"
        if name == "C":
            return "QC1"
        if name == "Symbol":
            return "OK"
        if text.startswith("Rcmd,"):
            command = bytes.fromhex(text[5:]).decode("utf-8", "replace")
            return monitor.run(command, guest, self).encode().hex()
        return ""

    def _set(self, guest: Guest, text: str) -> str | None:
        if text != "StartNoAckMode":
            return ""
        self._send(b"OK")  # acknowledged like any packet; gdb's ack of it is the last
        self._noack = True
        return None

    # --- the socket side ----------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # the server socket closed: the Launcher is done
            if self._client is not None:
                conn.close()  # one gdb at a time
                continue
            self._client, self._noack, self._last_sent = conn, False, b""
            threading.Thread(target=self._read, args=(conn,), name="lguest-gdb-client", daemon=True).start()
            self._stop(f"S{SIGTRAP:02x}")  # gdb expects a stopped target when it connects
            self._attention()

    def _read(self, conn: socket.socket) -> None:
        reader = rsp.PacketReader()
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            for event in reader.feed(chunk):
                self._event(conn, event)
        if self._client is conn:
            self._client = None
            self._packets.put(None)
            self._stop(f"S{SIGTRAP:02x}")
            self._attention()
        conn.close()

    def _event(self, conn: socket.socket, event: rsp.Event) -> None:
        if isinstance(event, rsp.Packet):
            if not self._noack:
                self._raw(conn, b"+")
            if event.data:
                self._packets.put(event.data)
        elif isinstance(event, rsp.Rejected):
            if not self._noack:
                self._raw(conn, b"-")
        elif isinstance(event, rsp.Ack):
            if not event.good and self._last_sent:
                self._raw(conn, self._last_sent)
        else:
            # Even while we still serve: gdb's `c` may be queued but not yet run.
            self._stop(f"S{SIGINT:02x}", even_while_serving=True)
            self._attention()

    def _attention(self) -> None:
        if self.guest is not None:
            self.guest.attention()

    def _send(self, data: bytes) -> None:
        conn = self._client
        if conn is not None:
            self._last_sent = rsp.frame(data)
            self._raw(conn, self._last_sent)

    def _raw(self, conn: socket.socket, data: bytes) -> None:
        # An error means the connection went: the reader thread sees it and detaches.
        with self._send_lock, contextlib.suppress(OSError):
            conn.sendall(data)

    def _drop_client(self) -> None:
        conn, self._client = self._client, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
