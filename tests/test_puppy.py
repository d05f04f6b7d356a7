"""puppy, our own 4.x-ABI guest kernel, boots on the Host and powers off."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from conftest import ROOT, RUN_TIMEOUT, lguest, mode

BANNER = "puppy 0.1: a paravirtualized guest for lguest (Linux 4.x ABI)"


def test_lguest_run_boots_puppy_into_its_shell(puppy) -> None:
    """`lguest run` is the demo: puppy's shell, here reading a script from a pipe; the
    end of the script is a Ctrl-D, and puppy powers off."""
    run = lguest("run", stdin="echo hello from the demo\n")
    lines = run.stdout.splitlines()
    assert lines[:2] == [BANNER, 'puppy: command line: "shell"']
    assert lines[2].startswith("puppy: 64 MiB of RAM, lguest_data at 0x")
    assert lines[3:6] == [
        "puppy: async hypercalls flushed",
        "puppy: cpu: GenuineIntel family 5, features edx 0780a151 ecx 00002201",
        "puppy: timer ticking at 100 Hz",
    ]
    assert "puppy: started pid 1 (sh)" in lines
    assert "hello from the demo" in lines
    assert lines[-3:] == ["puppy: all processes finished", lines[-2], "puppy: power off"]
    assert (run.status, run.reason) == (0, "CRASH: Power down")


def test_default_boot_without_the_shell(puppy) -> None:
    """With another word on the command line, puppy boots, reports and powers off."""
    run = lguest("run", "quiet")
    assert run.stdout.splitlines()[-2].endswith(" timer ticks")
    assert "puppy$" not in run.stdout
    assert (run.status, run.reason) == (0, "CRASH: Power down")


def test_puppy_as_an_explicit_kernel_with_arguments(puppy) -> None:
    run = lguest("48", str(puppy), "hello", "world")
    assert 'puppy: command line: "hello world"' in run.stdout
    assert "puppy: 48 MiB of RAM" in run.stdout
    assert run.status == 0


def test_puppy_follows_the_linux_boot_sequence(puppy) -> None:
    """INIT first, then NEW_PGTABLE to leave linear mode, like every 4.x Linux guest."""
    run = lguest("--trace=hcalls", "run")
    calls = [line.split("hcall ")[1].split("(")[0] for line in run.stderr.splitlines() if "hcall " in line]
    assert calls[:2] == ["LGUEST_INIT", "NEW_PGTABLE"]
    assert calls[2:6] == ["TS", "TS", "FLUSH_TLB", "FLUSH_ASYNC"]
    assert "LOAD_IDT_ENTRY" in calls and "SET_CLOCKEVENT" in calls
    assert calls[-1] == "SHUTDOWN"
    assert " async" in run.stderr


def test_puppy_benchmark_matches_native(puppy) -> None:
    native = subprocess.run([str(ROOT / "puppy" / "build" / "bench-native")], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    run = lguest("run", "bench")
    assert f"puppy: bench checksum {native}" in run.stdout


def test_restart_reboots_the_guest_in_process(puppy) -> None:
    """SHUTDOWN(restart) re-creates the Guest: puppy with `restart` boots again and again."""
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", "run", "restart"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    hang_guard = threading.Timer(RUN_TIMEOUT, proc.kill)
    hang_guard.start()
    assert proc.stdout
    boots = 0
    try:
        for line in proc.stdout:
            boots += line.rstrip("\n") == BANNER
            if boots == 3:
                break
    finally:
        hang_guard.cancel()
        proc.kill()
        _, err = proc.communicate()
    assert boots == 3
    assert "Traceback" not in err and "lguest: " not in err


def boot_in_process(puppy, cmdline: str):
    """Boot puppy with the Launcher's own machine, so the test can read the Host's counters."""
    from lguest.launcher.machine import build_machine
    from lguest.launcher.options import Options

    output = bytearray()
    machine = build_machine(Options(mem_mib=64, kernel=str(puppy), cmdline=cmdline), str(puppy),
                            output=output.extend)
    try:
        result = machine.guest.run()
    finally:
        machine.close()
    return result, output.decode(), machine.guest.stats


def test_puppy_sleeps_on_timer_ticks_without_spinning(puppy) -> None:
    """sleep=1000: 100 ticks of the 100 Hz clock, the vCPU halted (not spinning) meanwhile."""
    result, out, stats = boot_in_process(puppy, "sleep=1000")
    assert result.reason == "CRASH: Power down"
    line = next(line for line in out.splitlines() if line.startswith("puppy: slept"))
    words = line.split()  # "puppy: slept 1000 ms: 100 ticks, clock advanced N ms"
    assert words[2:5] == ["1000", "ms:", "100"]
    assert int(words[8]) >= 1000  # the clock the Guest reads went on while it slept
    # It idled in HALT, and the Host slept on an event each time: at most one sleep per
    # wake-up (a stale one may add a second).  A Host polling while halted would count a
    # sleep per poll; a Guest spinning instead of halting, none.
    assert stats["interrupts"] >= 100, stats
    assert stats["halted sleeps"] >= 100 // 2, stats
    assert stats["halted sleeps"] <= 2 * stats["interrupts"] + 2, stats


def test_puppy_lazy_fpu(puppy) -> None:
    run = lguest("--trace=hcalls,traps", "run", "fpu")
    assert "puppy: lazy FPU switch ok" in run.stdout
    assert "trap 7 (NM)" in run.stderr
    assert run.status == 0


def test_puppy_oops_line_for_an_invalid_opcode(puppy) -> None:
    run = lguest("run", "oops")
    assert run.status == 1
    assert run.reason.startswith("CRASH: oops: vector 6 (UD) at eip c01")
    assert run.reason.endswith(" error 00000000 cr2 00000000")
    assert f"puppy: {run.reason.removeprefix('CRASH: ')}" in run.stdout


def test_puppy_oops_line_for_a_page_fault(puppy) -> None:
    run = lguest("run", "pf")
    assert run.status == 1
    assert run.reason.startswith("CRASH: oops: vector 14 (PF) at eip c01")
    assert run.reason.endswith(" error 00000000 cr2 a0000000")


def started(run) -> dict[int, str]:
    """pid -> name of every process puppy started."""
    found = {}
    for line in run.stdout.splitlines():
        if line.startswith("puppy: started pid "):
            pid, name = line.removeprefix("puppy: started pid ").split(" ", 1)
            found[int(pid)] = name.strip("()")
    return found


def test_puppy_runs_three_user_processes(puppy, pae) -> None:
    run = lguest(*mode(pae), "run", "procs")
    assert run.status == 0, run.stderr
    assert sorted(started(run).values()) == ["counter", "hello", "sleeper"]
    out = run.stdout
    assert "hello: hello, world from pid 1 (hello)" in out
    for pid, name, status in ((1, "hello", 0), (2, "counter", 5), (3, "sleeper", 0)):
        assert f"puppy: pid {pid} ({name}) exited with status {status}" in out
    assert out.count("sleeper: pid 3 nap") == 3
    assert "puppy: all processes finished" in out


def test_puppy_processes_use_the_hosts_mmu_hypercalls(puppy, pae) -> None:
    run = lguest("--trace=hcalls", *mode(pae), "run", "procs")
    calls = run.stderr
    for batched in ("SET_PTE", "NEW_PGTABLE", "SET_STACK"):
        assert f"hcall {batched}(" in calls and " async" in calls
    # A new page table is a directory entry, or with PAE a PMD entry.
    assert ("hcall SET_PMD(" in calls) == pae
    assert run.status == 0


def test_more_processes_than_shadow_slots(puppy, pae) -> None:
    """Six address spaces against the Host's four cached shadows: no corruption."""
    run = lguest(*mode(pae), "run", "procs=6")
    assert run.status == 0, run.stderr
    checks = [line for line in run.stdout.splitlines() if " checksum " in line]
    assert len(checks) == 6 and all(line.endswith(" ok") for line in checks)


def test_hostile_processes_are_killed_and_the_good_one_survives(puppy, pae) -> None:
    run = lguest(*mode(pae), "run", "hostile")
    assert run.status == 0, run.stderr
    out = run.stdout
    names = started(run)
    expected = {
        "read-kernel": "page fault at 0xc0100000 (error 0x5)",
        "write-kernel": "page fault at 0xc0100000 (error 0x7)",
        "read-switcher": "page fault at 0xffc00000 (error 0x4)",
        "peek-secret": "page fault at 0x8070000 (error 0x4)",
        # With PAE the CPU runs with EFER.NXE: a fetch fault says so in bit 4 (I/D).
        "jump-unmapped": f"page fault at 0xdead0000 (error {0x14 if pae else 0x4:#x})",
        "int1f": "general protection fault (error 0xfa) at 0x",
        "cli": "general protection fault (error 0x0) at 0x",
        "hlt": "general protection fault (error 0x0) at 0x",
        "inb": "general protection fault (error 0x0) at 0x",
        "ud2": "invalid opcode at 0x",
    }
    for pid, name in names.items():
        if name in expected:
            assert f"puppy: pid {pid} ({name}) killed: {expected[name]}" in out
    assert set(expected) <= set(names.values())
    # Code on the stack: PAE's NX forbids it (a fetch fault: P|U|I/D), two levels cannot.
    stack_pid = next(pid for pid, name in names.items() if name == "run-stack")
    if pae:
        assert re.search(rf"puppy: pid {stack_pid} \(run-stack\) killed: page fault at 0xbfff[0-9a-f]{{4}} "
                         r"\(error 0x15\)", out)
    else:
        assert f"evil: pid {stack_pid} run-stack was NOT stopped" in out
    assert "isolation ok" in out
    assert "puppy: all processes finished" in out


def test_syscalls_through_a_trap_gate(puppy, pae) -> None:
    """`trapgate`: system calls go direct (ring 3 to ring 1 without the run loop)."""
    run = lguest(*mode(pae), "run", "procs", "trapgate")
    assert run.status == 0, run.stderr
    assert "puppy: all processes finished" in run.stdout


def _vm_kib() -> tuple[int, int]:
    """This process's resident and virtual size, in KiB (from /proc/self/status)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmSize"].split()[0])


def test_fifty_restarts_leave_the_process_the_size_it_was(puppy) -> None:
    """Each restart builds a new machine and closes the old one (Guest.close, Machine.close):
    its emulator and its RAM are released at once, not whenever the collector runs.

    The bound: between restart 10 and restart 50 the virtual size grows by less than
    one Guest's RAM (64 MiB; one leaked engine alone is far bigger) and the resident
    size by less than 16 MiB (a leaked boot adds about 1 MiB, so 40 would show).
    """
    from lguest.launcher.machine import build_machine
    from lguest.launcher.options import Options

    opts = Options(mem_mib=64, kernel=str(puppy), cmdline="restart")
    sizes = {}
    for boot in range(1, 51):
        machine = build_machine(opts, str(puppy), output=lambda data: None)
        try:
            assert machine.guest.run().restart
        finally:
            machine.close()
        if boot in (10, 50):
            sizes[boot] = _vm_kib()
    (rss10, vm10), (rss50, vm50) = sizes[10], sizes[50]
    assert vm50 - vm10 < 64 * 1024, sizes
    assert rss50 - rss10 < 16 * 1024, sizes
