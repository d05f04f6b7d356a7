"""puppy, our own 4.x-ABI guest kernel, boots on the Host and powers off."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, lguest

BANNER = "puppy 0.1: a paravirtualized guest for lguest (Linux 4.x ABI)"


def test_lguest_run_boots_puppy(puppy) -> None:
    run = lguest("run")
    assert run.stdout.splitlines() == [
        BANNER,
        'puppy: command line: ""',
        "puppy: 64 MiB of RAM, lguest_data at 0x102020",
        "puppy: async hypercalls flushed",
        "puppy: power off",
    ]
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
    assert calls[2:5] == ["TS", "TS", "FLUSH_TLB"]
    assert calls[-2:] == ["FLUSH_ASYNC", "SHUTDOWN"]
    assert " async" in run.stderr


def test_puppy_benchmark_matches_native(puppy) -> None:
    native = subprocess.run([str(ROOT / "puppy" / "build" / "bench-native")], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    run = lguest("run", "bench")
    assert f"puppy: bench checksum {native}" in run.stdout


def test_restart_reboots_the_guest_in_process(puppy) -> None:
    """SHUTDOWN(restart) re-creates the Guest: puppy with `restart` boots again and again."""
    proc = subprocess.Popen([sys.executable, "-m", "lguest.launcher.main", "run", "restart"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert out.decode().count(BANNER) >= 3
