"""The `lguest` command line (spec §8.1)."""

from __future__ import annotations

import dataclasses

import pytest

from lguest.launcher.devices import DEVICE_OPTIONS
from lguest.launcher.options import USAGE, HelpRequested, Options, UsageError, parse_args


def error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as e:
        parse_args(argv)
    text = str(e.value)
    assert "\n" not in text
    return text


# --- the original syntax ---------------------------------------------------------------------


def test_minimal() -> None:
    assert parse_args(["64", "vmlinux"]) == Options(mem_mib=64, kernel="vmlinux")


def test_defaults() -> None:
    o = parse_args(["64", "bzImage"])
    assert o.cmdline == "" and o.initrd is None and not o.verbose and not o.bundled
    assert o.trace == frozenset() and o.syscall_vector == 0x80
    assert o.devices == ()


def test_options_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_args(["64", "vmlinux"]).mem_mib = 1  # type: ignore[misc]


def test_kernel_args_joined_by_single_spaces() -> None:
    o = parse_args(["64", "vmlinux", "root=/dev/vda", "console=hvc0", "init=/bin/sh"])
    assert o.cmdline == "root=/dev/vda console=hvc0 init=/bin/sh"


def test_launcher_options_after_the_kernel_still_count() -> None:
    """The original's documented example puts --tunnet/--block after the kernel (getopt permutes)."""
    o = parse_args(["64", "vmlinux", "--tunnet=192.168.19.1", "--block=rootfile", "root=/dev/vda"])
    assert o.kernel == "vmlinux" and o.cmdline == "root=/dev/vda"
    assert o.devices == (("tunnet", "192.168.19.1"), ("block", "rootfile"))


def test_other_words_after_the_kernel_are_kernel_args() -> None:
    o = parse_args(["64", "vmlinux", "root=/dev/vda", "--block=x", "-v", "-s", "init=/bin/sh", "--",
                    "--help", "64"])
    assert o.kernel == "vmlinux"
    assert o.cmdline == "root=/dev/vda -s init=/bin/sh --help 64"
    assert o.devices == (("block", "x"),) and o.verbose


def test_word_starting_with_dash_right_after_the_kernel() -> None:
    assert parse_args(["64", "vmlinux", "-s"]).cmdline == "-s"


def test_options_before_memory_and_between_memory_and_kernel() -> None:
    o = parse_args(["-v", "--block=a.img", "128", "--rng", "--initrd=ird", "vmlinux", "quiet"])
    assert o.mem_mib == 128 and o.kernel == "vmlinux" and o.cmdline == "quiet"
    assert o.verbose and o.initrd == "ird" and o.devices == (("block", "a.img"), ("rng", ""))


def test_the_documented_example() -> None:
    # spec §8.1, with the options moved before the kernel (all words after it are kernel args).
    o = parse_args(["--tunnet=192.168.19.1", "--block=rootfile", "64", "vmlinux", "root=/dev/vda"])
    assert o.devices == (("tunnet", "192.168.19.1"), ("block", "rootfile")) and o.cmdline == "root=/dev/vda"


def test_kernel_args_keep_their_inner_spaces() -> None:
    assert parse_args(["64", "vmlinux", "a b", "c"]).cmdline == "a b c"


def test_memory_is_the_first_word_without_a_dash() -> None:
    o = parse_args(["--verbose", "32", "vmlinux"])
    assert o.mem_mib == 32


@pytest.mark.parametrize("mem", ["1", "64", "0064", "3072", "100000"])
def test_memory_sizes(mem: str) -> None:
    assert parse_args([mem, "k"]).mem_mib == int(mem)  # the loader checks the real limits


@pytest.mark.parametrize("mem", ["abc", "0", "00", "64M", "1.5", "+64", " 64", "0x40", "６４", "1_0", ""])
def test_bad_memory_sizes(mem: str) -> None:
    assert error([mem, "vmlinux"]) == f"Bad memory size '{mem}'"


def test_negative_memory_is_an_unknown_option() -> None:
    assert error(["-64", "vmlinux"]) == "Unknown argument -64"


def test_value_given_without_equals_is_caught() -> None:
    # Without '=' the file would be taken for the memory size: say what went wrong instead.
    message = error(["--block", "disk.img", "64", "vmlinux"])
    assert message == "Option --block needs a value: write --block=<file>"


def test_missing_everything() -> None:
    assert error([]) == "missing memory size"


def test_only_options() -> None:
    assert error(["-v", "--rng"]) == "missing memory size"


def test_missing_kernel() -> None:
    assert error(["64"]) == "missing kernel"
    assert error(["-v", "64", "--rng"]) == "missing kernel"


def test_double_dash_ends_options() -> None:
    o = parse_args(["-v", "--", "64", "-kernel-with-dash", "--x"])
    assert o.mem_mib == 64 and o.kernel == "-kernel-with-dash" and o.cmdline == "--x"


def test_double_dash_then_nothing() -> None:
    assert error(["64", "--"]) == "missing kernel"


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_verbose(flag: str) -> None:
    assert parse_args([flag, "64", "k"]).verbose
    assert parse_args([flag, flag, "64", "k"]).verbose


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag: str) -> None:
    with pytest.raises(HelpRequested):
        parse_args([flag])
    with pytest.raises(HelpRequested):
        parse_args(["64", flag, "vmlinux"])
    with pytest.raises(HelpRequested):
        parse_args(["run", flag])


def test_help_after_the_kernel_asks_for_help() -> None:
    with pytest.raises(HelpRequested):
        parse_args(["64", "vmlinux", "--help"])
    assert parse_args(["64", "vmlinux", "--", "--help"]).cmdline == "--help"


def test_usage_text() -> None:
    assert USAGE.startswith("usage: lguest [options] <mem-in-MiB> <vmlinux|bzImage> [kernel args...]\n")
    options = ["--verbose", "--initrd=", "--block=", "--rng", "--tunnet=", "--trace=", "--syscall-vector="]
    for option in [*options, "--help", "lguest run"]:
        assert option in USAGE


@pytest.mark.parametrize(("argv", "pae"), [
    (["64", "k"], None), (["--pae", "64", "k"], True), (["64", "k", "--no-pae"], False),
    (["run", "--pae"], True),
])
def test_page_table_format(argv: list[str], pae: bool | None) -> None:
    assert parse_args(argv).pae is pae


def test_page_table_format_given_once() -> None:
    assert error(["--pae", "--no-pae", "64", "k"]) == "Give --pae or --no-pae once"
    assert error(["--pae=yes", "64", "k"]) == "Option --pae takes no value"


def test_usage_states_the_memory_limits() -> None:
    assert "Memory: 2..3072 MiB in both modes." in USAGE
    assert "--pae, --no-pae" in USAGE


def test_initrd() -> None:
    assert parse_args(["--initrd=/boot/initrd.img", "64", "k"]).initrd == "/boot/initrd.img"


def test_initrd_twice() -> None:
    assert error(["--initrd=a", "--initrd=b", "64", "k"]) == "Option --initrd given twice"


def test_value_may_contain_equals() -> None:
    assert parse_args(["--block=a=b", "64", "k"]).devices == (("block", "a=b"),)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("--initrd", "Option --initrd needs a value: write --initrd=<file>"),
        ("--initrd=", "Option --initrd needs a value: write --initrd=<file>"),
        ("--block=", "Option --block needs a value: write --block=<file>"),
        ("--tunnet", "Option --tunnet needs a value: write --tunnet=<arg>"),
        ("--trace", "Option --trace needs a value: write --trace=<list>"),
        ("--syscall-vector=", "Option --syscall-vector needs a value: write --syscall-vector=<n>"),
        ("--verbose=1", "Option --verbose takes no value"),
        ("-v=1", "Option -v takes no value"),
        ("--rng=yes", "Option --rng takes no value"),
        ("--help=me", "Option --help takes no value"),
        ("--foo", "Unknown argument --foo"),
        ("--foo=bar", "Unknown argument --foo=bar"),
        ("-x", "Unknown argument -x"),
        ("-vv", "Unknown argument -vv"),
        ("-", "Unknown argument -"),
        ("--verb", "Unknown argument --verb"),
        ("--username=me", "Unknown argument --username=me"),
    ],
)
def test_bad_options(word: str, message: str) -> None:
    assert error([word, "64", "vmlinux"]) == message
    assert error(["64", word, "vmlinux"]) == message


def test_trace() -> None:
    assert parse_args(["--trace=hcalls", "64", "k"]).trace == frozenset({"hcalls"})
    everything = parse_args(["--trace=irqs,traps,hcalls", "64", "k"]).trace
    assert everything == frozenset({"hcalls", "traps", "irqs"})
    assert parse_args(["--trace=irqs", "--trace=traps", "64", "k"]).trace == frozenset({"traps", "irqs"})


@pytest.mark.parametrize("value", ["foo", "hcalls,foo", "hcalls,", "HCALLS", "all"])
def test_trace_unknown(value: str) -> None:
    bad = next(name for name in value.split(",") if name not in ("hcalls", "traps", "irqs"))
    message = error([f"--trace={value}", "64", "k"])
    assert message == f"Unknown trace '{bad}' (choose from hcalls, traps, irqs)"


@pytest.mark.parametrize(
    ("value", "vector"),
    [("128", 128), ("0x80", 0x80), ("0X81", 0x81), ("32", 32), ("255", 255), ("0xff", 255), ("0x20", 32)]
    + [("0128", 128)],
)
def test_syscall_vector(value: str, vector: int) -> None:
    assert parse_args([f"--syscall-vector={value}", "64", "k"]).syscall_vector == vector


@pytest.mark.parametrize(
    "value", ["31", "0x1f", "256", "0x100", "-1", "abc", "0x", "0o200", "0b1", "1_28", "0x8g"]
)
def test_bad_syscall_vector(value: str) -> None:
    assert error([f"--syscall-vector={value}", "64", "k"]) == (
        f"Bad syscall vector '{value}' (must be 32..255, decimal or 0x hex)"
    )


def test_syscall_vector_twice() -> None:
    argv = ["--syscall-vector=0x80", "--syscall-vector=0x81", "64", "k"]
    assert error(argv) == "Option --syscall-vector given twice"


def test_devices_repeat_and_keep_their_order() -> None:
    o = parse_args(["--block=a", "--tunnet=10.0.0.1", "--rng", "64", "--block=b",
                    "--tunnet=bridge:br0:52:54:00:12:34:56", "k"])  # fmt: skip
    assert o.devices == (
        ("block", "a"), ("tunnet", "10.0.0.1"), ("rng", ""), ("block", "b"),
        ("tunnet", "bridge:br0:52:54:00:12:34:56"),
    )  # fmt: skip


@pytest.mark.parametrize("kind", sorted(DEVICE_OPTIONS))
def test_every_device_entry_is_an_option_with_help(kind: str) -> None:
    """devices.py is the only place a device option is declared: the parser and the
    usage text both follow it."""
    device = DEVICE_OPTIONS[kind]
    word = f"--{kind}" if device.value is None else f"--{kind}=x"
    assert parse_args([word, "64", "k"]).devices == ((kind, "" if device.value is None else "x"),)
    assert device.help in USAGE
    if device.value is None:
        assert error([f"--{kind}=x", "64", "k"]) == f"Option --{kind} takes no value"
    else:
        needs = f"Option --{kind} needs a value: write --{kind}=<{device.value}>"
        assert error([f"--{kind}=", "64", "k"]) == needs


# --- lguest run ------------------------------------------------------------------------------


def test_run_defaults() -> None:
    o = parse_args(["run"])
    assert o == Options(mem_mib=64, kernel=None, bundled=True, cmdline="shell")


def test_run_with_memory() -> None:
    o = parse_args(["run", "128"])
    assert o.bundled and o.kernel is None and o.mem_mib == 128 and o.cmdline == "shell"


def test_run_with_kernel_args() -> None:
    o = parse_args(["run", "quiet", "init=/bin/sh", "-s"])
    assert o.mem_mib == 64 and o.cmdline == "quiet init=/bin/sh -s"


def test_run_with_memory_and_kernel_args() -> None:
    o = parse_args(["run", "256", "3"])
    assert o.mem_mib == 256 and o.cmdline == "3"


def test_run_with_options_everywhere() -> None:
    o = parse_args(["-v", "run", "--rng", "96", "--block=disk", "quiet", "--block=other"])
    assert o.verbose and o.devices == (("rng", ""), ("block", "disk"), ("block", "other"))
    assert o.mem_mib == 96 and o.cmdline == "quiet"


def test_run_bad_memory() -> None:
    assert error(["run", "0"]) == "Bad memory size '0'"


def test_run_double_dash() -> None:
    o = parse_args(["run", "--", "-s"])
    assert o.mem_mib == 64 and o.cmdline == "-s"


def test_run_bad_option() -> None:
    assert error(["run", "--bogus"]) == "Unknown argument --bogus"


def test_a_kernel_called_run_needs_a_path() -> None:
    o = parse_args(["64", "run"])
    assert o.kernel == "run" and not o.bundled
    assert parse_args(["64", "./run"]).kernel == "./run"
