"""The native event path against the pure-Python Host (--no-native).

Both must be the same machine to the Guest: the same exits, kill reasons and
console output, and no instruction ever run twice however often other threads
kick the vCPU.
"""

from __future__ import annotations

import ctypes
import threading

import pytest
from conftest import lguest, make_guest, run_while_rung, symbol

from lguest.host import calibration
from lguest.host.switcher import ExitKind


def test_the_exit_check_switch_is_found_and_proven() -> None:
    """On this machine's Unicorn the calibration finds the field, and the probe it
    rests on tells the two translations apart."""
    offset = calibration.calibrate_exit_checks()
    assert offset is not None
    assert calibration.exit_probe(None) == calibration.EXIT_PROBE_CHECKED
    assert calibration.exit_probe(offset) == calibration.EXIT_PROBE_QUIET
    assert calibration.EXIT_PROBE_CHECKED != calibration.EXIT_PROBE_QUIET


def test_the_engine_cpu_is_found_and_proven() -> None:
    """The CPU pointers come from uc_reg_read's code and are proven against the
    saved context: the live register state holds what we wrote."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_EBX

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x1000, 0x1000)
    uc.reg_write(UC_X86_REG_EBX, 0x5EED1234)
    found = calibration.engine_cpu(uc)
    assert found is not None
    assert ctypes.c_uint32.from_address(found.env + 3 * 8).value == 0x5EED1234  # regs[R_EBX]


def test_wrong_cpu_offsets_are_refused_not_followed(monkeypatch) -> None:
    """Offsets that do not lead to the register state give None, never a crash."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x1000, 0x1000)
    for offsets in ((0, 0), (8, 0x10), (0x1000000, 8)):
        monkeypatch.setattr(calibration, "_cpu_offsets", offsets)
        assert calibration.engine_cpu(uc) is None


def test_native_guest_has_no_per_block_doorbell(asm_guest) -> None:
    elf = asm_guest("test_main: INIT\n\tPOWEROFF")
    native, python = make_guest(elf, native=True), make_guest(elf, native=False)
    assert native.doorbell.gated and native.switcher.fixed_ports is not None
    assert not python.doorbell.gated and python.switcher.fixed_ports is None


@pytest.mark.parametrize(("value", "native"), [("1", False), ("0", True), ("", True)])
def test_lguest_no_native_sets_the_default(asm_guest, monkeypatch, value, native) -> None:
    """CI's second pass runs the Host-facing tests with LGUEST_NO_NATIVE=1."""
    monkeypatch.setenv("LGUEST_NO_NATIVE", value)
    guest = make_guest(asm_guest("test_main: INIT\n\tPOWEROFF"))
    assert guest.switcher.native is native
    assert guest.doorbell.gated is native


ROUNDS = 1000  # long enough for thousands of kicks, even with traps delivered by the CPU
STRESS_GUEST = """
	.set N, {rounds}
test_main:
	INIT
	GATE 6, on_ud, 0xF
	GATE 0x80, on_int, 0xF, 3
	xorl %edi, %edi				/* round */
1:	HCALL LHCALL_FLUSH_TLB, $1		/* the pages below miss again */
	xorl %ecx, %ecx
2:	movl %ecx, %eax
	shll $12, %eax
	addl $1, 0x200000(%eax)			/* TLB fill, read-modify-write */
	inb $0x42, %al				/* port read: the Host answers */
	addl $1, in_count
	outb %al, $0x80				/* port write */
	addl $1, out_count
	movzbl MMIO + 0x14, %eax		/* a device's status, through MMIO */
	addl $1, mmio_count
	ud2					/* invalid opcode, reflected */
	int $0x80				/* software interrupt, reflected */
	incl %ecx
	cmpl $16, %ecx
	jne 2b
	incl %edi
	cmpl $N, %edi
	jne 1b
	POWEROFF
on_ud:	addl $2, (%esp)				/* past the ud2 */
	addl $1, ud_count
	iret
on_int:	addl $1, int_count
	iret
	.data
in_count: .long 0
out_count: .long 0
mmio_count: .long 0
ud_count: .long 0
int_count: .long 0
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_thousands_of_kicks_in_every_hook_never_run_an_instruction_twice(asm_guest, native) -> None:
    """Kicks from another thread land while the vCPU is in TLB fills, port reads and
    writes, MMIO, the interrupt hook and the invalid-opcode hook: every counter
    the Guest keeps, and every port read the Host serves, comes out exactly once
    per round (counts, not time)."""
    probe = make_guest(asm_guest("test_main: INIT\n\tPOWEROFF"))
    mmio = min(probe.pages.mmio_pages) << 12
    elf = asm_guest(f"\t.set MMIO, {mmio:#x}\n" + STRESS_GUEST.format(rounds=ROUNDS))
    guest = make_guest(elf, native=native)

    reads_before = guest.switcher.bus.count
    result, kicks = run_while_rung(guest)
    assert result.reason == "CRASH: Power down"
    assert kicks > 1000
    per_kind = ROUNDS * 16
    for name in ("in_count", "out_count", "mmio_count", "ud_count", "int_count"):
        assert guest.memory.read_u32(symbol(elf, name)) == per_kind, name
    assert {guest.memory.read_u32(0x200000 + 4096 * i) for i in range(16)} == {ROUNDS}
    # One in and one out a round, each once; the reads of the absent port never
    # reach the Launcher on the native path (ports.c answers them).
    served = guest.switcher.port_reads_served
    assert served == (per_kind if native else 0)
    assert guest.switcher.bus.count - reads_before + served == 2 * per_kind


@pytest.mark.parametrize("args", [("run", "fpu"), ("run", "oops"), ("run", "quiet")])
def test_both_paths_give_the_guest_the_same_machine(puppy, args) -> None:
    """puppy's runs, killed or not: the same status, kill reason and console lines
    (less the tick count, which depends on how fast time passed)."""
    native, python = lguest(*args), lguest("--no-native", *args)
    assert native.reason
    assert (native.status, native.reason) == (python.status, python.reason)
    assert _without_ticks(native.stdout) == _without_ticks(python.stdout)


def test_both_paths_kill_a_hostile_guest_alike(asm_guest) -> None:
    """A Guest that touches a port from ring 3: #GP(0) with no handler, the same kill."""
    elf = asm_guest("""
test_main:
	INIT
	call setup_user_paging
	TO_USER user
user:	inb $0x42, %al
""")
    native, python = lguest("32", str(elf)), lguest("--no-native", "32", str(elf))
    assert native.status == 1
    assert native.reason.startswith("unhandled trap 13")
    assert (native.status, native.reason) == (python.status, python.reason)


def _without_ticks(out: str) -> list[str]:
    return [line for line in out.splitlines() if "tick" not in line]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_code_segment_that_is_not_flat_turns_the_entry_gate_off(asm_guest, native) -> None:
    """The gate needs CS flat: once the Guest installs a kernel code segment with a
    base of 1 MiB, the vCPU goes back to the per-block doorbell, and the Guest
    runs on exactly as on the pure-Python path (its CS reloaded only by itself)."""
    elf = asm_guest("""
test_main:
	INIT
	HCALL LHCALL_LOAD_GDT_ENTRY, $12, $0x0000ffff, $0x00cfba10	/* base 0x100000 */
	ljmp $0x61, $(1f - 0x100000)
1:	HCALL LHCALL_FLUSH_TLB, $1					/* an exit and re-entry */
	movl $42, %edi
	HCALL LHCALL_SHUTDOWN, $power_down, $1
""")
    guest = make_guest(elf, native=native)
    result = guest.run()
    assert result.reason == "CRASH: Power down"
    assert not guest.doorbell.gated
    assert guest.switcher.get("edi") == 42


PORTS_GUEST = """
test_main:
	INIT
	movl $0x12345678, %eax
	inb $0x64, %al				/* PS/2 status: 1 */
	movl %eax, results
	movl $0x12345678, %eax
	inw $0x42, %ax				/* absent: all ones, one word */
	movl %eax, results + 4
	inl $0x42, %eax
	movl %eax, results + 8
	movw $0xcf8, %dx			/* PCI config address: the Launcher's state */
	movl $0x80000800, %eax
	outl %eax, %dx
	xorl %eax, %eax
	inl %dx, %eax
	movl %eax, results + 12
	POWEROFF
	.data
results: .long 0, 0, 0, 0
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_fixed_port_reads_answer_as_the_launcher_does(asm_guest, native) -> None:
    """The PS/2 status, an absent port at two sizes (the upper bytes of EAX kept),
    and a PCI config register (always the Launcher's): the same on both paths,
    the fixed ones served in C on the native path."""
    elf = asm_guest(PORTS_GUEST)
    guest = make_guest(elf, native=native)
    assert guest.run().reason == "CRASH: Power down"
    results = [guest.memory.read_u32(symbol(elf, "results") + 4 * i) for i in range(4)]
    assert results == [0x12345601, 0x1234FFFF, 0xFFFFFFFF, 0x80000800]
    assert guest.switcher.port_reads_served == (3 if native else 0)


def test_no_native_is_a_flag() -> None:
    from lguest.launcher.options import UsageError, parse_args

    assert parse_args(["64", "vmlinux"]).native is None  # the Host's default
    assert parse_args(["--no-native", "64", "vmlinux"]).native is False
    with pytest.raises(UsageError, match="Option --no-native takes no value"):
        parse_args(["--no-native=1", "64", "vmlinux"])


def test_a_code_segment_that_is_not_flat_but_never_used_keeps_the_gate(asm_guest) -> None:
    """Linux's GDT holds 16-bit BIOS code segments it never runs in under lguest:
    only the entry CS is loaded from matters."""
    elf = asm_guest("""
test_main:
	INIT
	HCALL LHCALL_LOAD_GDT_ENTRY, $20, $0x0000ffff, $0x00009a00	/* 16-bit code */
	HCALL LHCALL_FLUSH_TLB, $1
	POWEROFF
""")
    guest = make_guest(elf, native=True)
    assert guest.run().reason == "CRASH: Power down"
    assert guest.doorbell.gated


def test_a_debugger_brings_back_precise_stops(asm_guest) -> None:
    """A breakpoint stops the CPU from inside a hook, at an instruction, which needs
    the emulator's exit checks: the first one puts the vCPU back on the per-block
    doorbell, and the breakpoint still stops exactly at its instruction."""
    elf = asm_guest("""
test_main:
	INIT
	movl $1, %edi
here:	movl $2, %edi
	POWEROFF
""")
    guest = make_guest(elf, native=True)
    assert guest.doorbell.gated
    hits: list[int] = []

    def on_break(eip: int) -> None:
        hits.append(eip)
        guest.switcher.pause()

    guest.switcher.watch_code(symbol(elf, "here"), symbol(elf, "here"), on_break)
    assert not guest.doorbell.gated
    guest.switcher.run()  # a world switch that ends at the breakpoint
    while not hits:
        guest.switcher.run()
    assert hits == [symbol(elf, "here")]
    assert guest.switcher.get("eip") == symbol(elf, "here")
    assert guest.switcher.get("edi") == 1


@pytest.mark.parametrize("ring_first", [True, False], ids=["before", "after"])
def test_a_ring_during_a_direct_trap_still_stops_the_vcpu(asm_guest, ring_first) -> None:
    """Delivering a direct trap moves EIP from inside the interrupt hook: a ring
    landing just before or just after that must still stop the vCPU, not wait for
    the Guest's next exit, which a Guest spinning in its handler never makes."""
    elf = asm_guest("""
test_main:
	INIT
	GATE 0x80, spin, 0xF
	int $0x80
spin:	jmp spin
""")
    guest = make_guest(elf, native=True)
    guest.switcher.serve_traps(None)  # the Host's Python delivers (the CPU's own: test_native_traps.py)
    trapped = threading.Event()
    kicked_after = threading.Event()
    deliver, handle = guest.switcher.direct_trap, guest.handle_trap

    def deliver_and_ring(vector: int, errcode: int, software: bool) -> bool:
        if ring_first:
            guest.doorbell.ring()  # as if another thread rang just now
        delivered = deliver(vector, errcode, software)
        if not ring_first:
            guest.doorbell.ring()
        trapped.set()
        return delivered

    def note(exit_) -> None:
        if trapped.is_set() and exit_.kind is ExitKind.KICKED:
            kicked_after.set()
        handle(exit_)

    guest.switcher.direct_trap = deliver_and_ring
    guest.handle_trap = note
    runner = threading.Thread(target=guest.run, daemon=True)
    runner.start()
    stopped = kicked_after.wait(60)  # a hang guard, not a timing check
    guest.kill("test: done")
    runner.join(60)
    assert trapped.is_set() and guest.switcher.direct_traps == 1
    assert stopped
