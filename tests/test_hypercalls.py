"""Hypercalls (spec §1, §3.6): every kill message word for word, from real guests."""

from __future__ import annotations

import pytest
from conftest import lguest

# Each case: the guest's code after the prelude, the Launcher's reason, exit status.
KILLS = {
    "hypercall-before-init": ("test_main: HCALL 5", "hypercall 5 before INIT"),
    "shutdown-before-init": ("test_main: POWEROFF", "hypercall 2 before INIT"),
    "init-twice": ("test_main: INIT\n INIT", "already have lguest_data"),
    "init-outside-ram": ("test_main: HCALL LHCALL_LGUEST_INIT, $0x1fffa95",
                         "bad guest page 0x01fffa95"),
    "init-wraps": ("test_main: HCALL LHCALL_LGUEST_INIT, $0xfffffff0", "bad guest page 0xfffffff0"),
    "bad-syscall-vector": ("test_main: movl $0x40, ld_syscall_vec\n INIT", "bad syscall vector"),
    "bad-kernel-address": ("test_main: movl $0xffc00000, ld_kernel_address\n INIT",
                           "bad kernel address 0xffc00000"),
    "old-load-gdt": ("test_main: INIT\n HCALL 3", "Bad hypercall 3"),
    "pae-set-pmd": ("test_main: INIT\n HCALL 13", "Bad hypercall 13"),
    "old-notify": ("test_main: INIT\n HCALL 17", "Bad hypercall 17"),
    "unknown-hypercall": ("test_main: INIT\n HCALL 12345", "Bad hypercall 12345"),
    "shutdown-message": ("test_main: INIT\n SHUTDOWN $msg\n msg: .asciz \"it hurts\"", "CRASH: it hurts"),
    "shutdown-bad-address": ("test_main: INIT\n SHUTDOWN $0x1ffffc0", "bad read address 0x1ffffc0 len 128"),
    "idt-entry-256": ("test_main: INIT\n HCALL LHCALL_LOAD_IDT_ENTRY, $256, $0, $0x8e00",
                      "Setting idt entry 256"),
    "idt-task-gate": ("test_main: INIT\n HCALL LHCALL_LOAD_IDT_ENTRY, $3, $0, $0x8500", "bad IDT type 5"),
    "gdt-entry-32": ("test_main: INIT\n HCALL LHCALL_LOAD_GDT_ENTRY, $32, $0, $0", "too many gdt entries 32"),
    "tls-outside-ram": ("test_main: INIT\n HCALL LHCALL_LOAD_TLS, $0x1fffff0",
                        "bad read address 0x1fffff0 len 24"),
    "stack-segment-rpl0": ("test_main: INIT\n HCALL LHCALL_SET_STACK, $0x68, $0x8000, $1",
                           "bad stack segment 104"),
    "stack-three-pages": ("test_main: INIT\n HCALL LHCALL_SET_STACK, $0x69, $0x8000, $3",
                          "bad stack pages 3"),
    # 0x2000000 is the first page above 32 MiB of RAM: the Launcher's device gap.
    "stack-page-not-ram": ("test_main: INIT\n HCALL LHCALL_SET_STACK, $0x69, $0x2001000, $2",
                           "bad stack page 0x2000fff"),
    "set-pgd-1024": ("test_main: INIT\n HCALL LHCALL_SET_PGD, $0x10000, $1024",
                     "Attempt to set pgd 1024/1024"),
    "set-pte-switcher": ("test_main: INIT\n HCALL LHCALL_SET_PTE, $0x10000, $0xffc00000, $0",
                         "attempt to set pte into Switcher pages"),
    "async-runs-before-sync-call": (
        "test_main: INIT\n QUEUE 0, 77\n POWEROFF", "Bad hypercall 77"),
    "async-kill-in-ring": (
        "test_main: INIT\n QUEUE 0, LHCALL_TS, $1\n QUEUE 1, LHCALL_LOAD_GDT_ENTRY, $40\n"
        " HCALL LHCALL_FLUSH_ASYNC", "too many gdt entries 40"),
}


@pytest.mark.parametrize("name", sorted(KILLS))
def test_kill_message(asm_guest, name: str) -> None:
    code, reason = KILLS[name]
    run = lguest("32", str(asm_guest(code)))
    assert run.reason == reason
    assert run.status == 1


def test_bad_hypercall_reason_keeps_its_newline(asm_guest, tmp_path) -> None:
    """The spec's format is `Bad hypercall %li\\n`; the Host API reports it as such."""
    from lguest.host.core import Guest
    from lguest.launcher.boot import allocate_guest_ram, load_kernel, write_boot_params
    from lguest.launcher.pci import PciBus
    from lguest.launcher.ports import Ports

    mem = 32 << 20
    ram = allocate_guest_ram(mem)
    kernel = load_kernel(ram, mem, str(asm_guest("test_main: INIT\n HCALL 11")))
    write_boot_params(ram, mem, "", None)
    guest = Guest(ram, mem, kernel.entry, Ports(PciBus(), print))
    result = guest.run()
    assert result.reason == "Bad hypercall 11\n"
    assert not result.restart


def test_syscall_vector_option_allows_another_vector(asm_guest) -> None:
    guest = asm_guest("test_main: movl $0x40, ld_syscall_vec\n INIT\n POWEROFF")
    assert lguest("32", str(guest)).reason == "bad syscall vector"
    run = lguest("--syscall-vector=64", "32", str(guest))
    assert (run.status, run.reason) == (0, "CRASH: Power down")


def test_init_fills_in_lguest_data(asm_guest) -> None:
    """INIT writes tsc_khz 0, reserve_mem for the Switcher at 0xFFC00000, and the time."""
    run = lguest("32", str(asm_guest("""
test_main:
	movl $0x12345678, lguest_data + LD_TSC_KHZ
	INIT
	cmpl $0, lguest_data + LD_TSC_KHZ
	jne fail
	cmpl $0x400000, lguest_data + LD_RESERVE_MEM
	jne fail
	cmpl $1700000000, lguest_data + 12	/* tv_sec: some time after 2023 */
	jb fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "lguest_data not filled in"
""")))
    assert (run.status, run.reason) == (0, "CRASH: Power down")


def test_async_ring_runs_in_order_and_frees_slots(asm_guest) -> None:
    """Queued calls run before the synchronous one, and every slot is marked free."""
    run = lguest("--trace=hcalls", "32", str(asm_guest("""
test_main:
	INIT
	QUEUE 0, LHCALL_TS, $1
	QUEUE 1, LHCALL_FLUSH_TLB, $0
	QUEUE 2, LHCALL_TS, $0
	HCALL LHCALL_FLUSH_ASYNC
	cmpl $0xffffffff, lguest_data + LD_HCALL_STATUS
	jne fail
	POWEROFF
fail:	SHUTDOWN $failed
failed:	.asciz "ring not drained"
""")))
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    calls = [line.split("hcall ")[1] for line in run.stderr.splitlines() if "trace: hcall" in line]
    assert calls[:-1] == [
        "LGUEST_INIT(0x101000, 0x0, 0x0, 0x0)",
        "TS(0x1, 0x0, 0x0, 0x0) async",
        "FLUSH_TLB(0x0, 0x0, 0x0, 0x0) async",
        "TS(0x0, 0x0, 0x0, 0x0) async",
        "FLUSH_ASYNC(0x0, 0x0, 0x0, 0x0)",
    ]
    assert calls[-1].startswith("SHUTDOWN(") and len(calls) == 6


def test_async_ring_cursor_wraps(asm_guest) -> None:
    """The Host's cursor continues where it stopped and wraps at 64."""
    run = lguest("--trace=hcalls", "32", str(asm_guest("""
test_main:
	INIT
	/* queue 70 TS calls, flushing whenever the next slot is still in use */
	xorl %ebx, %ebx			/* call counter */
	xorl %edi, %edi			/* slot */
3:	cmpb $0xff, lguest_data + LD_HCALL_STATUS(%edi)
	je 4f
	pushl %ebx
	HCALL LHCALL_FLUSH_ASYNC
	popl %ebx
4:	imull $20, %edi, %eax
	movl $LHCALL_TS, lguest_data + LD_HCALLS(%eax)
	movl %ebx, lguest_data + LD_HCALLS + 4(%eax)
	movb $0, lguest_data + LD_HCALL_STATUS(%edi)
	incl %edi
	andl $63, %edi
	incl %ebx
	cmpl $70, %ebx
	jne 3b
	HCALL LHCALL_FLUSH_ASYNC
	POWEROFF
""")))
    assert (run.status, run.reason) == (0, "CRASH: Power down")
    ts_args = [int(line.split("TS(")[1].split(",")[0], 16) for line in run.stderr.splitlines()
               if "hcall TS(" in line]
    assert ts_args == list(range(70))
