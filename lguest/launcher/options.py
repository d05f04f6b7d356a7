"""The `lguest` command line (spec §8.1).

    lguest [options] <mem-in-MiB> <vmlinux|bzImage> [kernel args...]
    lguest run [options] [<mem-in-MiB>] [kernel args...]

As in the original Launcher, the memory size is the first word that does not start with
`-`, so options that take a value must be written `--name=value`.  Options may appear anywhere
(the original's getopt permuted its arguments); after the kernel, every word that is not one of
our options (even `-x` ones) belongs to the kernel command line, joined by single spaces.  A `--`
ends option parsing: every later word is positional (after the kernel: the kernel's).

`lguest run` boots the bundled puppy kernel: `kernel` is None, `bundled` is True, and the
memory is 64 MiB unless the first positional word after `run` is a number of MiB (so a
numeric first kernel argument, e.g. a runlevel, needs an explicit size: `lguest run 64 3`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lguest import abi
from lguest.launcher.devices import DEVICE_OPTIONS

BUNDLED_DEFAULT_MEM_MIB = 64
BUNDLED_DEFAULT_COMMAND = "shell"  # `lguest run` alone: puppy's interactive shell
TRACE_CHOICES = ("hcalls", "traps", "irqs")
# Vectors below 32 are CPU exceptions (and the hypercall vector 0x1f).
SYSCALL_VECTOR_MIN = abi.FIRST_EXTERNAL_VECTOR
SYSCALL_VECTOR_MAX = abi.IDT_ENTRIES - 1

USAGE = f"""\
usage: lguest [options] <mem-in-MiB> <vmlinux|bzImage> [kernel args...]
       lguest run [options] [<mem-in-MiB>] [kernel args...]
       lguest --restore=<file> [options]

`lguest run` boots the bundled puppy kernel ({BUNDLED_DEFAULT_MEM_MIB} MiB unless a size is given)
into its shell; words after `run` replace "{BUNDLED_DEFAULT_COMMAND}" on its command line.
Options need '=' for their values and may come anywhere; every other word after
the kernel is passed to it on its command line ('--' ends the options).

Memory: {abi.MIN_GUEST_MEM_MIB}..{abi.MAX_GUEST_MEM_MIB} MiB in both modes.  A non-PAE Linux uses only its low
memory (891 MiB at most); a PAE (HIGHMEM64G) one uses it all.

options:
  -v, --verbose              describe the Guest's memory, devices and I/O as it runs
  --initrd=<file>            load <file> as the initial ramdisk
  --pae, --no-pae            the kernel uses PAE (three-level) page tables, or does
                             not; by default the kernel image says (Linux does), else
                             non-PAE.  `lguest run --pae` boots the PAE build of puppy
{"".join(device.help for device in DEVICE_OPTIONS.values())}\
  --stats                    say where the time went, when the Guest ends
  --stats=json               ... as one JSON object, with counts by hypercall and trap
  --gdb=[<host>:]<port>      serve gdb's remote protocol on TCP (host 127.0.0.1
                             unless given; port 0 picks a free one, said on stderr)
  --gdb-wait                 with --gdb: stop before the Guest's first instruction
  --trace-file=<file>        write a timeline of the run (Chrome trace-event JSON)
  --no-native                run the Host's pure-Python path (for reading and testing)
  --trace=<list>             trace events, a comma list of: {", ".join(TRACE_CHOICES)}
  --snapshot=<file>          where SIGUSR1 (or Ctrl-] then s) saves the running Guest
  --snapshot-and-exit=<file> ... and the Launcher ends once it is saved
  --restore=<file>           resume a saved Guest (device options may name other files)
  --force-restore            restore even onto a disk image changed since the snapshot
  --syscall-vector=<n>       system call vector, {SYSCALL_VECTOR_MIN}..{SYSCALL_VECTOR_MAX} \
(decimal or 0x hex, default {abi.SYSCALL_VECTOR:#x})
  -h, --help                 show this help
"""

_MEM_RE = re.compile(r"[0-9]+")
_VECTOR_RE = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
# The devices' options (devices.py), by option.
_DEVICES = {f"--{kind}": device for kind, device in DEVICE_OPTIONS.items()}
_FLAGS = frozenset({"-v", "--verbose", "-h", "--help", "--stats", "--gdb-wait", "--pae", "--no-pae",
                    "--no-native", "--force-restore"}
                   | {name for name, device in _DEVICES.items() if device.value is None})
# Options that need a value, with the placeholder shown when it is missing.
_VALUED = {name: device.value for name, device in _DEVICES.items() if device.value is not None} | {
    "--initrd": "file",
    "--trace": "list",
    "--syscall-vector": "n",
    "--gdb": "port",
    "--trace-file": "file",
    "--snapshot": "file",
    "--snapshot-and-exit": "file",
    "--restore": "file",
}
_ONCE = frozenset({"--initrd", "--syscall-vector", "--gdb", "--trace-file", "--restore"})
_GDB_RE = re.compile(r"(?:(?P<host>[^:]*):)?(?P<port>[0-9]{1,5})")


class UsageError(Exception):
    """A bad command line; str() is one line, to be followed by USAGE."""


class HelpRequested(Exception):
    """`-h` or `--help` was given: not an error, the caller prints USAGE and exits 0."""


@dataclass(frozen=True)
class Options:
    mem_mib: int
    kernel: str | None  # None with `lguest run`: boot the bundled kernel
    cmdline: str = ""
    initrd: str | None = None
    verbose: bool = False
    trace: frozenset[str] = frozenset()
    syscall_vector: int = abi.SYSCALL_VECTOR
    bundled: bool = False
    stats: bool = False
    stats_json: bool = False
    gdb: tuple[str, int] | None = None  # where the gdb stub listens
    gdb_wait: bool = False
    trace_file: str | None = None
    pae: bool | None = None  # --pae / --no-pae; None: as the kernel image says
    native: bool | None = None  # False: --no-native; None: the Host's default (LGUEST_NO_NATIVE)
    # (kind, value) of each device option (devices.py), e.g. ("block", "disk.img") or
    # ("rng", ""), in command-line order: the original creates devices (and so assigns
    # PCI slots) in option order.
    devices: tuple[tuple[str, str], ...] = ()
    snapshot: str | None = None  # where a save request writes the Guest
    snapshot_and_exit: bool = False  # ... and the Launcher ends after it
    restore: str | None = None  # the snapshot to resume instead of booting
    force_restore: bool = False  # accept a disk image changed since the snapshot


def _parse_mem(word: str) -> int:
    if not _MEM_RE.fullmatch(word) or int(word) < 1:
        raise UsageError(f"Bad memory size '{word}'")
    return int(word)


def _parse_trace(value: str) -> frozenset[str]:
    names = value.split(",")
    for name in names:
        if name not in TRACE_CHOICES:
            raise UsageError(f"Unknown trace '{name}' (choose from {', '.join(TRACE_CHOICES)})")
    return frozenset(names)


def _parse_gdb(value: str) -> tuple[str, int]:
    match = _GDB_RE.fullmatch(value)
    if not match or int(match["port"]) > 65535:
        raise UsageError(f"Bad --gdb '{value}' (write --gdb=<port> or --gdb=<host>:<port>)")
    return match["host"] or "127.0.0.1", int(match["port"])


def _parse_vector(value: str) -> int:
    if _VECTOR_RE.fullmatch(value):
        # Decimal even with leading zeros; only an explicit 0x means hex.
        n = int(value, 16) if value[:2].lower() == "0x" else int(value, 10)
        if SYSCALL_VECTOR_MIN <= n <= SYSCALL_VECTOR_MAX:
            return n
    raise UsageError(
        f"Bad syscall vector '{value}' "
        f"(must be {SYSCALL_VECTOR_MIN}..{SYSCALL_VECTOR_MAX}, decimal or 0x hex)"
    )


class _Parser:
    def __init__(self) -> None:
        self.verbose = False
        self.stats = False
        self.stats_json = False
        self.gdb: tuple[str, int] | None = None
        self.gdb_wait = False
        self.native: bool | None = None
        self.trace_file: str | None = None
        self.pae: bool | None = None
        self.initrd: str | None = None
        self.syscall_vector = abi.SYSCALL_VECTOR
        self.seen: set[str] = set()
        self.trace: set[str] = set()
        self.devices: list[tuple[str, str]] = []
        self.snapshot: str | None = None
        self.snapshot_and_exit = False
        self.restore: str | None = None
        self.force_restore = False

    def option(self, word: str) -> None:
        name, eq, value = word.partition("=")
        if word == "--stats=json":
            self.stats = self.stats_json = True
            return
        if name in _FLAGS:
            if eq:
                raise UsageError(f"Option {name} takes no value")
            if name in ("-h", "--help"):
                raise HelpRequested()
            if name in _DEVICES:
                self.devices.append((_DEVICES[name].kind, ""))
            elif name == "--stats":
                self.stats = True
            elif name == "--gdb-wait":
                self.gdb_wait = True
            elif name in ("--pae", "--no-pae"):
                if self.pae is not None:
                    raise UsageError("Give --pae or --no-pae once")
                self.pae = name == "--pae"
            elif name == "--no-native":
                self.native = False
            elif name == "--force-restore":
                self.force_restore = True
            else:
                self.verbose = True
            return
        if name not in _VALUED:
            raise UsageError(f"Unknown argument {word}")
        if not value:
            raise UsageError(f"Option {name} needs a value: write {name}=<{_VALUED[name]}>")
        if name in _ONCE and name in self.seen:
            raise UsageError(f"Option {name} given twice")
        self.seen.add(name)
        if name in _DEVICES:
            self.devices.append((_DEVICES[name].kind, value))
        elif name == "--initrd":
            self.initrd = value
        elif name == "--syscall-vector":
            self.syscall_vector = _parse_vector(value)
        elif name == "--trace":
            self.trace |= _parse_trace(value)
        elif name == "--gdb":
            self.gdb = _parse_gdb(value)
        elif name in ("--snapshot", "--snapshot-and-exit"):
            if self.snapshot is not None:
                raise UsageError("Give one of --snapshot and --snapshot-and-exit, once")
            self.snapshot, self.snapshot_and_exit = value, name == "--snapshot-and-exit"
        elif name == "--restore":
            self.restore = value
        else:
            self.trace_file = value

    def split_kernel_words(self, words: list[str]) -> list[str]:
        """Words after the kernel: the Launcher's own options among them still count.

        The original's getopt permuted its arguments, so its documented example
        `lguest 64 vmlinux --tunnet=... --block=rootfile root=/dev/vda` works; any
        other word (even one starting with `-`) goes to the kernel.
        """
        kernel_words: list[str] = []
        for i, word in enumerate(words):
            if word == "--":
                return kernel_words + words[i + 1:]  # everything after `--` is the kernel's
            if word.partition("=")[0] in _FLAGS | _VALUED.keys():
                self.option(word)
            else:
                kernel_words.append(word)
        return kernel_words


# tour:L.10 The command line
# The Launcher is the user program of lguest.  In the original it was a process that
# mapped some memory for the Guest, opened /dev/lguest, and then sat in a loop on
# read(), serving devices whenever the Host gave control back.  Here it is the half of
# one Python process under lguest/launcher/; the half under lguest/host/ plays the kernel
# module.  You run it as `lguest 64 vmlinux root=/dev/vda`: the first word that is not an
# option is the memory size in MiB, the next is the kernel, and the rest is the kernel's
# command line.  `lguest run` boots the bundled puppy instead.  Device options (--block,
# --rng, --tunnet, --net) are only recorded here, in order; what they mean lives in
# devices.py.
def parse_args(argv: list[str]) -> Options:
    """Parse the command line (without the program name)."""
    p = _Parser()
    mem: int | None = None
    kernel: str | None = None
    bundled = False
    kernel_args: list[str] = []
    options_done = False  # after "--" every word is positional
    for i, word in enumerate(argv):
        if not options_done and word.startswith("-"):
            if word == "--":
                options_done = True
            else:
                p.option(word)
            continue
        if mem is None and not bundled:
            if word == "run":
                bundled = True
            else:
                mem = _parse_mem(word)
            continue
        if not bundled:
            kernel = word
            kernel_args = p.split_kernel_words(argv[i + 1 :])
            break
        if mem is None and _MEM_RE.fullmatch(word):
            mem = _parse_mem(word)
            continue
        kernel_args = p.split_kernel_words(argv[i:])
        break

    if p.restore is not None:
        if kernel is not None or bundled or kernel_args or p.initrd is not None:
            raise UsageError("--restore takes no kernel, kernel arguments or --initrd: the snapshot has them")
        mem = 0 if mem is None else mem  # 0: the snapshot's; else it must match
    elif p.force_restore:
        raise UsageError("--force-restore needs --restore=<file>")
    elif bundled:
        mem = BUNDLED_DEFAULT_MEM_MIB if mem is None else mem
    elif mem is None:
        raise UsageError("missing memory size")
    elif kernel is None:
        raise UsageError("missing kernel")
    if p.gdb_wait and p.gdb is None:
        raise UsageError("Option --gdb-wait needs --gdb=<port>")
    if bundled and not kernel_args:
        kernel_args = [BUNDLED_DEFAULT_COMMAND]
    return Options(
        mem_mib=mem,
        kernel=kernel,
        cmdline=" ".join(kernel_args),
        initrd=p.initrd,
        verbose=p.verbose,
        trace=frozenset(p.trace),
        syscall_vector=p.syscall_vector,
        bundled=bundled,
        devices=tuple(p.devices),
        stats=p.stats,
        stats_json=p.stats_json,
        gdb=p.gdb,
        gdb_wait=p.gdb_wait,
        trace_file=p.trace_file,
        pae=p.pae,
        native=p.native,
        snapshot=p.snapshot,
        snapshot_and_exit=p.snapshot_and_exit,
        restore=p.restore,
        force_restore=p.force_restore,
    )
