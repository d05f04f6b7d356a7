"""Running `lguest --gdb=127.0.0.1:0` and talking to it: with a real gdb, or raw RSP."""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, RUN_TIMEOUT

LISTENING = re.compile(r"gdb stub listening on ([0-9.]+):([0-9]+)")


@dataclass
class Launched:
    proc: subprocess.Popen
    port: int
    stderr: list[str]

    def finish(self) -> tuple[int, str, str]:
        """Wait for the Launcher: (status, stdout, all of stderr)."""
        out, err = self.proc.communicate(timeout=RUN_TIMEOUT)
        return self.proc.returncode, out, "".join(self.stderr) + err


def launch(*args: str, stdin: int | None = subprocess.DEVNULL) -> Launched:
    """Start the Launcher with a stub on a free port; return once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", *args], cwd=ROOT, text=True,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while True:
            assert sel.select(timeout=RUN_TIMEOUT), "the stub never said where it listens"
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                return Launched(proc, int(match[2]), lines)


def gdb(port: int, *commands: str, elf: Path | None = None) -> str:
    """gdb in batch mode against the stub: its whole output."""
    argv = ["gdb", "-batch", "-nx", "-ex", "set architecture i386"]
    argv += [str(elf)] if elf else []
    argv += ["-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        argv += ["-ex", command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT)
    return proc.stdout + proc.stderr


class Rsp:
    """A raw protocol client, for what a gdb would never send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, data: bytes) -> None:
        self.send_raw(b"$" + data + b"#%02x" % (sum(data) & 0xFF))

    def read_byte(self) -> bytes:
        if not self.buffer:
            self.buffer = self.sock.recv(65536)
            assert self.buffer, "the stub closed the connection"
        byte, self.buffer = self.buffer[:1], self.buffer[1:]
        return byte

    def reply(self) -> bytes:
        """The next packet's data (acks before it are skipped), acknowledged."""
        while self.read_byte() != b"$":
            pass
        data = b""
        while (byte := self.read_byte()) != b"#":
            data += byte
        self.read_byte(), self.read_byte()
        self.send_raw(b"+")
        return data

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        assert self.read_byte() == b"+"
        return self.reply()

    def closed_by_peer(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()
