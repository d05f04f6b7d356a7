"""The `lguest` command: exit statuses and one-line errors, never a traceback."""

from __future__ import annotations

from conftest import lguest


def test_hypercall_before_init_from_the_issue(asm_guest) -> None:
    run = lguest("64", str(asm_guest("test_main: HCALL 5")))
    assert run.stderr == "lguest: hypercall 5 before INIT\n"
    assert run.status == 1


def test_usage_error_exits_2() -> None:
    run = lguest("--frobnicate", "64", "kernel")
    assert run.status == 2
    assert run.stderr.splitlines()[0] == "lguest: Unknown argument --frobnicate"
    assert "usage: lguest" in run.stderr


def test_help_exits_0() -> None:
    run = lguest("--help")
    assert run.status == 0 and run.stdout.startswith("usage: lguest")


def test_missing_kernel_file(tmp_path) -> None:
    run = lguest("64", str(tmp_path / "nope"))
    assert run.status == 2
    assert run.stderr == f"lguest: Failed to open {tmp_path / 'nope'}: No such file or directory\n"


def test_not_a_kernel(tmp_path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, I am not a kernel" * 100)
    run = lguest("64", str(junk))
    assert (run.status, run.stderr) == (2, "lguest: This doesn't look like a bzImage to me\n")


def test_ram_too_small_for_kernel(asm_guest) -> None:
    run = lguest("1", str(asm_guest("test_main: POWEROFF")))
    assert run.status == 2
    assert run.stderr.count("\n") == 1 and "too small" in run.stderr


def test_tap_networking_errors(puppy) -> None:
    """The original's messages; the tap is made first, so this needs root and /dev/net/tun."""
    import os

    run = lguest("--tunnet=999.1.1.1", "64", str(puppy))
    if os.geteuid() != 0:
        assert (run.status, run.stderr) == (2, "lguest: opening /dev/net/tun: Permission denied\n")
        return
    assert (run.status, run.stderr) == (2, "lguest: Failed to parse IP address '999.1.1.1'\n")
    run = lguest("--tunnet=bridge:", "64", str(puppy))
    assert (run.status, run.stderr) == (2, "lguest: must specify bridge name\n")
    run = lguest("--tunnet=10.1.1.1:zz:11", "64", str(puppy))
    assert (run.status, run.stderr) == (2, "lguest: Failed to parse mac address 'zz:11'\n")


def test_bad_device_arguments(puppy, tmp_path) -> None:
    run = lguest(f"--block={tmp_path / 'none.img'}", "64", str(puppy))
    missing = tmp_path / "none.img"
    assert (run.status, run.stderr) == (2, f"lguest: Failed to open {missing}: No such file or directory\n")
    run = lguest(f"--block={tmp_path / 'none.img'},rw", "64", str(puppy))
    assert run.stderr == f"lguest: Bad --block '{tmp_path / 'none.img'},rw': the only option is ',ro'\n"
    run = lguest("--net=tcp:1:2:3", "64", str(puppy))
    assert run.stderr == "lguest: Bad --net 'tcp:1:2:3': expected udp:<port>:<host>:<port>\n"


def test_devices_appear_in_option_order(puppy, tmp_path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    run = lguest("--verbose", "--rng", f"--block={disk}", "--net=udp:47001:127.0.0.1:47002", "run")
    assert run.status == 0
    devices = [line for line in run.stderr.splitlines() if line.startswith("lguest: device ")]
    assert devices == ["lguest: device 1: console", "lguest: device 2: rng", "lguest: device 3: block",
                       "lguest: device 4: net"]


def test_verbose_describes_the_guest(puppy) -> None:
    run = lguest("--verbose", "run")
    assert "lguest: device 1: console" in run.stderr
    assert "lguest: Section 0: size" in run.stderr
    assert run.status == 0


def test_trace_traps_disassembles(asm_guest) -> None:
    run = lguest("--trace=traps", "32", str(asm_guest("test_main: INIT\n ud2")))
    assert "lguest trace: trap 6 (UD) err=0x0 at 0x61:0x" in run.stderr
    assert run.stderr.splitlines()[-2].endswith("ud2")
