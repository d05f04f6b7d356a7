"""Port writes served in C (ports.c) against the pure-Python Host (--no-native).

The early console spends eight `out`s on each byte; C queues the seven quiet ones
(the address latch, and PCI_CFG capability fields the Launcher accepts whatever the
value), and the byte itself when the window those set is the console's emerg_wr,
and the Switcher hands them to the Launcher in order (a newline at once).  The
same Guests run both ways: what they print, what the Launcher's PCI state and port
count say afterwards, kill reasons, and every #GP of a refused write at its `out`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from conftest import GUEST_MEM, lguest, run_while_rung, symbol
from test_paging import FAIL

from lguest import abi
from lguest.abi import PciCfg, VirtioCap

CAP = PciCfg.CAP_PCI_CFG
EMERG_WR = abi.VirtioMmio.DEVICE + abi.VIRTIO_CONSOLE_EMERG_WR  # in the console's BAR0
PER_BYTE = 8  # the early console's `out`s a byte, all queued

# One byte through the console's PCI_CFG window, written as Linux's early console does.
PRINT = f"""
.macro CFG_ADDR reg
	movw $0xcf8, %dx
	movl $(0x80000800 | \\reg), %eax
	outl %eax, %dx
	movw $0xcfc, %dx
.endm
print_byte:				/* %bl */
	xorl %ebp, %ebp
	movl $4, %ecx
	movl ${EMERG_WR}, %edi
window_byte:				/* %bl through the window %ebp (bar), %ecx (length), %edi (offset) */
	CFG_ADDR {CAP + VirtioCap.BAR}
	movl %ebp, %eax
	outb %al, %dx
	CFG_ADDR {CAP + VirtioCap.LENGTH}
	movl %ecx, %eax
	outl %eax, %dx
	CFG_ADDR {CAP + VirtioCap.OFFSET}
	movl %edi, %eax
	outl %eax, %dx
	CFG_ADDR {PciCfg.PCI_CFG_DATA}
	movzbl %bl, %eax
data_out:
	outl %eax, %dx
	ret
print_string:				/* %esi: a NUL-terminated string */
1:	movb (%esi), %bl
	testb %bl, %bl
	jz 2f
	call print_byte
	incl %esi
	jmp 1b
2:	ret
"""


class Run:
    """One Guest built in-process with what it prints and the Launcher's warnings."""

    def __init__(self, elf, native: bool) -> None:
        from lguest.launcher.machine import build_machine
        from lguest.launcher.options import Options

        self.printed = bytearray()
        self.warnings: list[str] = []
        self.line = threading.Event()
        self.queued_at_newlines: list[int] = []  # the writes C had queued when each line came out
        opts = Options(mem_mib=GUEST_MEM >> 20, kernel=str(elf), native=native)
        self.machine = build_machine(opts, str(elf), output=self._output, warn=self.warnings.append)
        self.guest = self.machine.guest

    def _output(self, data: bytes) -> None:
        self.printed += data
        fixed_ports = self.guest.switcher.fixed_ports
        if data == b"\n" and fixed_ports is not None:
            self.queued_at_newlines.append(fixed_ports.deferred)
        if b"\n" in self.printed:
            self.line.set()

    def run(self) -> str | None:
        try:
            return self.guest.run().reason
        finally:
            self.machine.close()

    def launcher_view(self) -> dict[str, object]:
        """What the Launcher saw: the port count, the latch, the console's config space."""
        ports = self.machine.ports
        return {"printed": bytes(self.printed), "warnings": self.warnings, "port writes": ports.count,
                "latch": ports.pci.address, "config": bytes(self.machine.console.config)}


def both_ways(elf, reason: str = "CRASH: Power down") -> tuple[Run, Run]:
    runs = Run(elf, native=True), Run(elf, native=False)
    for run in runs:
        assert run.run() == reason
    return runs


def test_early_console_bytes_alike_and_queued(asm_guest) -> None:
    """Every `out` of every byte is queued in C (no Python `out` callback at all), and each
    line reaches the console from the hook as soon as its newline is queued: before C has
    queued anything of the next line."""
    elf = asm_guest(PRINT + """
test_main:
	INIT
	movl $text, %esi
	call print_string
	POWEROFF
text:	.asciz "hello, world\\nsecond line\\n"
""")
    native, python = both_ways(elf)
    assert native.launcher_view() == python.launcher_view()
    assert native.printed == b"hello, world\nsecond line\n"
    fixed_ports = native.guest.switcher.fixed_ports
    assert fixed_ports.deferred == PER_BYTE * len(native.printed)
    assert fixed_ports.passed == 0
    assert native.queued_at_newlines == [PER_BYTE * len(b"hello, world\n"), PER_BYTE * len(native.printed)]


@pytest.mark.parametrize("ending", ["1: jmp 1b", "1: HCALL LHCALL_HALT\n\tjmp 1b"], ids=["spins", "halts"])
def test_bytes_before_a_spin_or_halt_are_printed_at_once(asm_guest, ending: str) -> None:
    """Nothing else stops the vCPU: the byte itself is never queued, so it is out before
    the Guest goes on, and stopping it (a signal) ends the run with nothing lost."""
    elf = asm_guest(PRINT + f"""
test_main:
	INIT
	movl $text, %esi
	call print_string
	{ending}
text:	.asciz "stuck\\n"
""")
    views = []
    for native in (True, False):
        run = Run(elf, native)
        stopper = threading.Thread(target=lambda run=run: (run.line.wait(60), run.guest.stop_run()))
        stopper.start()
        assert run.run() == ""
        stopper.join()
        views.append(run.launcher_view())
    assert views[0] == views[1]
    assert views[0]["printed"] == b"stuck\n"


def _wait_for(condition: Callable[[], bool]) -> None:
    """Until `condition` holds (a count another thread raises), at most a minute."""
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.mark.parametrize("ending", ["1: jmp 1b", "1: HCALL LHCALL_HALT\n\tjmp 1b"], ids=["spins", "halts"])
def test_a_partial_line_before_a_spin_or_halt_is_not_lost(asm_guest, ending: str) -> None:
    """No newline: the bytes wait in C's queue while the Guest spins (a halt stops the
    emulator and hands them over at once), and stopping the run prints them."""
    text = b"no newline"
    elf = asm_guest(PRINT + f"""
test_main:
	INIT
	movl $text, %esi
	call print_string
	{ending}
text:	.asciz "{text.decode()}"
""")
    def all_written(run: Run) -> bool:
        fixed_ports = run.guest.switcher.fixed_ports
        if fixed_ports is not None:
            return fixed_ports.deferred == PER_BYTE * len(text)  # queued, not yet printed
        return len(run.printed) == len(text)

    views = []
    for native in (True, False):
        run = Run(elf, native)
        stopper = threading.Thread(target=lambda run=run: (_wait_for(lambda: all_written(run)),
                                                           run.guest.stop_run()))
        stopper.start()
        assert run.run() == ""
        stopper.join()
        views.append(run.launcher_view())
    assert views[0] == views[1]
    assert views[0]["printed"] == text


def test_writes_queued_before_a_kill_reach_the_launcher(asm_guest) -> None:
    """Quiet writes, then a bad hypercall: the Launcher still gets every write, in order."""
    elf = asm_guest(PRINT + f"""
test_main:
	INIT
	movb $'x', %bl
	call print_byte
	CFG_ADDR {CAP + VirtioCap.OFFSET}
	movl $0x40, %eax
	outl %eax, %dx			/* quiet: the window now points elsewhere */
	CFG_ADDR {CAP + VirtioCap.LENGTH}
	HCALL 77
""")
    native, python = both_ways(elf, "Bad hypercall 77\n")
    assert native.launcher_view() == python.launcher_view()
    view = native.launcher_view()
    assert view["latch"] == 0x80000800 | CAP + VirtioCap.LENGTH
    assert view["config"][CAP + VirtioCap.OFFSET] == 0x40
    assert native.printed == b"x"
    assert native.guest.switcher.fixed_ports.deferred == PER_BYTE + 3


QUIET_LOOP = """
test_main:
	INIT
	movl $1000, %ecx
	movw $0xcf8, %dx
1:	movl %ecx, %eax
	outl %eax, %dx			/* the latch: quiet */
	outb %al, $0x80			/* an ignored port: quiet */
	loop 1b
	POWEROFF
"""


def test_a_full_queue_is_handed_over_from_the_hook(asm_guest) -> None:
    native, python = both_ways(asm_guest(QUIET_LOOP))
    assert native.launcher_view() == python.launcher_view()
    assert native.launcher_view()["port writes"] >= 2000
    assert native.guest.switcher.fixed_ports.deferred == 2000


def test_kicks_between_quiet_writes_lose_none(asm_guest) -> None:
    """Another thread rings the vCPU as often as it can: every stop hands the queue over,
    and the Launcher ends with every write, in order."""
    elf = asm_guest(QUIET_LOOP)
    views = []
    for native in (True, False):
        run = Run(elf, native)
        result, rings = run_while_rung(run.guest)
        run.machine.close()
        assert result.reason == "CRASH: Power down" and rings
        views.append(run.launcher_view())
    assert views[0] == views[1]


# A #GP handler that notes where the fault was and steps over the one-byte `out`.
GP_NOTES = """
gp_handler:
	movl 4(%esp), %eax
	movl gp_count, %ecx
	movl %eax, gp_eips(,%ecx,4)
	incl gp_count
	incl 4(%esp)
	addl $4, %esp			/* the error code */
	iret
	.data
	.globl gp_count, gp_eips
gp_count: .long 0
gp_eips: .long 0, 0, 0
	.text
"""


def test_a_refused_write_faults_at_its_out_both_ways(asm_guest) -> None:
    """Queued writes before it, then a refused data write (the vendor ID), and one after a
    partial write to the latch, which leaves C not knowing what is selected: each is a
    #GP at its `out` (the Guest checks), with the Launcher's warning, exactly as without C."""
    elf = asm_guest(PRINT + GP_NOTES + f"""
test_main:
	INIT
	GATE 13, gp_handler
	CFG_ADDR {CAP + VirtioCap.OFFSET}
	movl $0x40, %eax
	outl %eax, %dx			/* quiet, queued */
	CFG_ADDR 0
first:	outl %eax, %dx			/* the vendor ID: refused */
	CFG_ADDR {CAP + VirtioCap.BAR}	/* a quiet byte write's address ... */
	movw $0xcf8, %dx
	xorl %eax, %eax
	outb %al, %dx			/* ... made the vendor ID's by a partial write */
	movw $0xcfc, %dx
second:	outb %al, %dx			/* refused */
	cmpl $2, gp_count
	jne fail
	cmpl $first, gp_eips
	jne fail
	cmpl $second, gp_eips + 4
	jne fail
	POWEROFF
""" + FAIL)
    native, python = both_ways(elf)
    assert native.launcher_view() == python.launcher_view()
    assert native.warnings == ["Attempt to write to port 3324 (0xffffffff mask)",
                               "Attempt to write to port 3324 (0xff mask)"]


def test_refused_write_kills_alike_from_the_command_line(asm_guest) -> None:
    """The hostile test's Guest (no #GP handler), after queued writes: same message, status."""
    elf = asm_guest(PRINT + """
test_main:
	INIT
	movb $'x', %bl
	call print_byte
	CFG_ADDR 0
bad:	outl %eax, %dx
""")
    for path in ((), ("--no-native",)):
        run = lguest(*path, "32", str(elf))
        assert run.status == 1
        assert run.stdout == "x"
        assert "lguest: Attempt to write to port 3324 (0xffffffff mask)" in run.stderr
        assert run.reason == f"unhandled trap 13 at {symbol(elf, 'bad'):#x} (0x0)"


def test_puppys_console_alike_both_ways(puppy) -> None:
    """puppy's boot report (its early console, then its virtio console): the same words
    both ways (the tick count aside, which is time's)."""
    runs = [lguest(*path, "run", "quiet") for path in ((), ("--no-native",))]
    said = []
    for run in runs:
        assert (run.status, run.reason) == (0, "CRASH: Power down")
        said.append([line for line in run.stdout.splitlines() if not line.endswith(" timer ticks")])
    assert said[0] == said[1]
    assert said[0][0].startswith("puppy 0.1:")


def test_an_invalid_window_faults_at_its_out_both_ways(asm_guest) -> None:
    """Windows the Launcher refuses (bar 1, length 3, an unaligned offset), each between
    bytes C queued: each is the Launcher's warning and a #GP at that `out`, exactly as
    without C, and only those three writes reach the Python hook."""
    elf = asm_guest(PRINT + GP_NOTES + f"""
test_main:
	INIT
	GATE 13, gp_handler
	movb $'a', %bl
	call print_byte
	movb $'b', %bl
	movl $1, %ebp
	call window_byte		/* bar 1 */
	xorl %ebp, %ebp
	movl $3, %ecx
	call window_byte		/* length 3 */
	movl $4, %ecx
	movl ${EMERG_WR + 2}, %edi
	call window_byte		/* offset not a multiple of the length */
	movb $'c', %bl
	call print_byte
	cmpl $3, gp_count
	jne fail
	cmpl $data_out, gp_eips
	jne fail
	cmpl $data_out, gp_eips + 8
	jne fail
	POWEROFF
""" + FAIL)
    native, python = both_ways(elf)
    assert native.launcher_view() == python.launcher_view()
    assert native.printed == b"ac"
    assert native.warnings == ["Attempt to write to port 3324 (0xffffffff mask)"] * 3
    assert native.guest.switcher.fixed_ports.passed == 3


def test_a_valid_window_that_is_not_emerg_wr_kills_alike(asm_guest) -> None:
    """Two bytes of emerg_wr: a valid window the console does not take quietly, which
    only Python may decide (the Guest dies for it)."""
    elf = asm_guest(PRINT + """
test_main:
	INIT
	movb $'a', %bl
	call print_byte
	movl $2, %ecx
	call window_byte
	POWEROFF
""")
    native, python = both_ways(elf, "console: bad driver: Unexpected write to offset 68")
    assert native.launcher_view() == python.launcher_view()
    assert native.printed == b"a"
    assert native.guest.switcher.fixed_ports.passed == 1


def test_a_window_changed_in_python_is_not_trusted(asm_guest) -> None:
    """The window C saw set to emerg_wr, then its offset changed by a write C leaves to
    Python (after a partial latch write C cannot follow): the next byte goes to Python
    too, and is refused there (#GP), as without C.  Trusting what it saw, C would have
    queued a write the Launcher refuses."""
    elf = asm_guest(PRINT + GP_NOTES + f"""
test_main:
	INIT
	GATE 13, gp_handler
	movb $'a', %bl
	call print_byte
	CFG_ADDR {CAP + VirtioCap.OFFSET}
	movw $0xcf8, %dx
	outb %al, %dx			/* the same address, but C no longer knows it */
	movw $0xcfc, %dx
	movl ${EMERG_WR + 1}, %eax
	outl %eax, %dx			/* to Python: the window is now invalid */
	CFG_ADDR {PciCfg.PCI_CFG_DATA}
	movl $'b', %eax
refused:
	outl %eax, %dx
	cmpl $1, gp_count
	jne fail
	cmpl $refused, gp_eips
	jne fail
	POWEROFF
""" + FAIL)
    native, python = both_ways(elf)
    assert native.launcher_view() == python.launcher_view()
    assert native.printed == b"a"
    assert native.warnings == ["Attempt to write to port 3324 (0xffffffff mask)"]
    assert native.guest.switcher.fixed_ports.passed == 2
