"""Every number and layout of the lguest 4.x ABI that this package uses.

The Guest-visible contract (spec: docs/abi.md) lives here and nowhere
else: hypercall numbers, the `lguest_data` layout, `boot_params` offsets, segment
selectors, trap vectors, PCI/virtio constants.  Section numbers refer to the spec.
"""

from __future__ import annotations

import struct
from enum import IntEnum

# --- §0 constants -------------------------------------------------------------------
PAGE_SIZE = 4096
PAGE_SHIFT = 12
GUEST_PL = 1  # the Guest kernel runs at ring 1
LGUEST_TRAP_ENTRY = 0x1F  # int $0x1f is a hypercall
LHCALL_RING_SIZE = 64
LGUEST_IRQS = 32
IDT_ENTRIES = 256
GDT_ENTRIES = 32
FIRST_EXTERNAL_VECTOR = 0x20
SYSCALL_VECTOR = 0x80
X86_EFLAGS_IF = 0x200
X86_SUBARCH_LGUEST = 1
LGUEST_SHUTDOWN_POWEROFF = 1
LGUEST_SHUTDOWN_RESTART = 2
ENOENT = 2
DEVICE_PAGES = 256  # the 1 MiB gap between the top of RAM and the first MMIO window
VIRTQUEUE_NUM = 256  # a virtqueue's size after a reset, and the largest a Guest may choose
MAX_PCI_DEVICES = 32

# We pick the pre-3.11 fixed Switcher address: the whole top page-directory slot.
SWITCHER_ADDR = 0xFFC00000
RESERVE_MEM = (1 << 32) - SWITCHER_ADDR  # written to lguest_data.reserve_mem at INIT


class Hcall(IntEnum):
    """§1.2: the 4.x hypercall numbers (eax of `int $0x1f`)."""

    FLUSH_ASYNC = 0
    LGUEST_INIT = 1
    SHUTDOWN = 2
    NEW_PGTABLE = 4
    FLUSH_TLB = 5
    LOAD_IDT_ENTRY = 6
    SET_STACK = 7
    TS = 8
    SET_CLOCKEVENT = 9
    HALT = 10
    SET_PMD = 13  # PAE Guests only: for a non-PAE one this is a bad hypercall
    SET_PTE = 14
    SET_PGD = 15
    LOAD_TLS = 16
    LOAD_GDT_ENTRY = 18
    SEND_INTERRUPTS = 19


# --- §2 struct lguest_data -------------------------------------------------------------
class LguestData:
    """Byte offsets inside `struct lguest_data` (1388 bytes on i386)."""

    IRQ_ENABLED = 0
    BLOCKED_INTERRUPTS = 4
    CR2 = 8
    TIME = 12  # struct timespec { s32 tv_sec; s32 tv_nsec; }
    IRQ_PENDING = 20
    HCALL_STATUS = 24  # u8[64]
    HCALLS = 88  # 64 x { u32 arg0..arg4 }
    HCALL_SIZE = 20
    RESERVE_MEM = 1368
    TSC_KHZ = 1372
    NOIRQ_IRET = 1376
    KERNEL_ADDRESS = 1380
    SYSCALL_VEC = 1384
    SIZE = 1388


SHUTDOWN_REASON_BYTES = 128  # SHUTDOWN reads exactly this much of its reason string
HCALL_FREE = 0xFF  # hcall_status value: slot free / done (Host writes)

# --- §3.1 / §3.3 boot protocol ---------------------------------------------------------
BOOT_PARAMS_GPA = 0x0000
BOOT_PARAMS_SIZE = 4096
CMDLINE_GPA = 0x1000
BZIMAGE_LOAD_GPA = 0x100000
BZIMAGE_MAGIC_OFFSET = 0x202
BZIMAGE_MAGIC = b"HdrS"
KERNEL_ALIGNMENT = 0x1000000  # 16 MiB
BZIMAGE_PAYLOAD_VERSION = 0x208  # the boot protocol that added payload_offset/_length


class BootParams:
    """Absolute offsets in the 4 KiB `struct boot_params` page (§3.3)."""

    APM_BIOS_VERSION = 0x040  # u16
    TBOOT_ADDR = 0x058  # u64
    E820_ENTRIES = 0x1E8  # u8
    SETUP_SECTS = 0x1F1  # u8 (read from a bzImage file)
    HDR_VERSION = 0x206  # u16
    TYPE_OF_LOADER = 0x210  # u8
    LOADFLAGS = 0x211  # u8
    CODE32_START = 0x214  # u32 (read from a bzImage file)
    RAMDISK_IMAGE = 0x218  # u32
    RAMDISK_SIZE = 0x21C  # u32
    CMD_LINE_PTR = 0x228  # u32
    KERNEL_ALIGNMENT = 0x230  # u32
    HARDWARE_SUBARCH = 0x23C  # u32
    PAYLOAD_OFFSET = 0x248  # u32 (bzImage, protocol 2.08+): the compressed kernel, from code32 start
    PAYLOAD_LENGTH = 0x24C  # u32
    E820_MAP = 0x2D0  # { u64 addr; u64 size; u32 type; } entries


BOOT_PROTOCOL_VERSION = 0x0207
KEEP_SEGMENTS = 0x40
LOADER_TYPE_UNKNOWN = 0xFF
E820_RAM = 1

# --- §0 segment selectors / §5 GDT ------------------------------------------------------
GDT_ENTRY_TLS_MIN = 6
GDT_ENTRY_TLS_ENTRIES = 3
GDT_ENTRY_LGUEST_CS = 10
GDT_ENTRY_LGUEST_DS = 11
GDT_ENTRY_KERNEL_CS = 12
GDT_ENTRY_KERNEL_DS = 13
GDT_ENTRY_TSS = 16
GDT_ENTRY_DOUBLEFAULT_TSS = 31
HOST_OWNED_GDT_ENTRIES = frozenset(
    {GDT_ENTRY_LGUEST_CS, GDT_ENTRY_LGUEST_DS, GDT_ENTRY_TSS, GDT_ENTRY_DOUBLEFAULT_TSS}
)
LGUEST_CS = GDT_ENTRY_LGUEST_CS * 8  # 0x50, Host-only ring-0 code
LGUEST_DS = GDT_ENTRY_LGUEST_DS * 8  # 0x58, Host-only ring-0 data
KERNEL_CS = GDT_ENTRY_KERNEL_CS * 8 | GUEST_PL  # 0x61
KERNEL_DS = GDT_ENTRY_KERNEL_DS * 8 | GUEST_PL  # 0x69
USER_CS = 0x73
USER_DS = 0x7B

# The Host's TSS (§5.1): 104 bytes, and an I/O bitmap offset past its end (no bitmap).
TSS_SIZE = 104
TSS_IO_BITMAP_OFFSET = 102  # where the u16 io_bitmap_base lives in the TSS

# Descriptors the Host writes itself (§3.4, §5.1), as (low dword, high dword).
FLAT_CODE_DPL0 = (0x0000FFFF, 0x00CF9B00)
FLAT_DATA_DPL0 = (0x0000FFFF, 0x00CF9300)
FLAT_CODE_DPL1 = (0x0000FFFF, 0x00CFBB00)
FLAT_DATA_DPL1 = (0x0000FFFF, 0x00CFB300)

# --- §4 traps ---------------------------------------------------------------------------
class Trap(IntEnum):
    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17


TRAPS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17})
TRAPNUM_IN_SWITCHER = 256  # §4.1: still 256 after a run = fault while loading Guest state
IDT_IGNORED_VECTORS = frozenset({2, 8, 15, LGUEST_TRAP_ENTRY})  # §4.5
GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF

# EFLAGS bits the Host clears when it enters a Guest handler (§4.6).
X86_EFLAGS_TF = 0x100
X86_EFLAGS_NT = 0x4000
X86_EFLAGS_RF = 0x10000
X86_EFLAGS_VM = 0x20000
INITIAL_EFLAGS = 0x202  # §3.4

# Page-table entry bits (§6): the low half of a PAE entry has the same (host/pgformat.py has the rest).
PTE_PRESENT = 0x001
PTE_RW = 0x002
PTE_USER = 0x004
PTE_ACCESSED = 0x020
PTE_DIRTY = 0x040
PTE_PSE = 0x080
PAGE_TABLE_FLAGS = 0x067  # _PAGE_TABLE: the only flags a page-directory entry may carry
PTRS_PER_PGD = 1024
PGDIR_SHIFT = 22

# #PF error-code bits (§6.3).
PF_WRITE = 2
PF_USER = 4

# --- §7.1 port I/O ----------------------------------------------------------------------
PORT_PS2_STATUS = 0x64
PCI_CONFIG_ADDR = 0xCF8  # 0xCF8..0xCFB
PCI_CONFIG_DATA = 0xCFC  # 0xCFC..0xCFF
OPCODE_CLI = 0xFA

# --- §7.2 PCI / virtio ------------------------------------------------------------------
PCI_VENDOR_REDHAT_QUMRANET = 0x1AF4
VIRTIO_PCI_DEVICE_BASE = 0x1040  # + virtio device id
PCI_CONFIG_SIZE = 152  # the Launcher's struct pci_config
PCI_CLASS_BRIDGE_HOST = 0x06


class VirtioId(IntEnum):
    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4


class PciCfg:
    """Offsets inside one device's 152-byte configuration space (§7.2)."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION = 0x08
    PROG_IF = 0x09
    SUBCLASS = 0x0A
    CLASS = 0x0B
    CACHELINE_LATENCY = 0x0C
    BAR0 = 0x10
    BAR5_END = 0x28
    SUBSYS_VENDOR = 0x2C
    SUBSYS_ID = 0x2E
    EXPANSION_ROM = 0x30
    CAP_PTR = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D
    CAP_COMMON = 0x40
    CAP_NOTIFY = 0x50
    CAP_ISR = 0x64
    CAP_DEVICE = 0x74
    CAP_PCI_CFG = 0x84
    PCI_CFG_DATA = 0x94  # the PCI_CFG capability's data window


PCI_STATUS_CAP_LIST = 0x0010
# (class, subclass) of each virtio device (§7.2), and the console's fixed place.
PCI_CLASS_CONSOLE = (0x07, 0x00)
PCI_CLASS_NET = (0x02, 0x00)
PCI_CLASS_BLOCK = (0x01, 0x80)
PCI_CLASS_RNG = (0xFF, 0x00)
CONSOLE_IRQ = 1  # irq 0 is the timer; devices take 1, 2, 3... in creation order
PCI_SUBSYS_ID_VIRTIO = 0x40


class VirtioCap:
    """`struct virtio_pci_cap` field offsets and cfg_type values."""

    VNDR = 0
    NEXT = 1
    LEN = 2
    CFG_TYPE = 3
    BAR = 4
    OFFSET = 8
    LENGTH = 12
    NOTIFY_OFF_MULTIPLIER = 16  # notify cap only
    SIZE = 16
    NOTIFY_SIZE = 20
    PCI_CFG_SIZE = 20
    VENDOR_ID = 0x09
    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5


class VirtioMmio:
    """Layout of each device's BAR0 window (§7.3)."""

    COMMON = 0
    COMMON_SIZE = 56
    NOTIFY = 56
    NOTIFY_SIZE = 2
    ISR = 58
    ISR_SIZE = 1
    DEVICE = 60


# virtio console config: cols u16, rows u16, max_nr_ports u32, emerg_wr u32.
VIRTIO_CONSOLE_EMERG_WR = 8
VIRTIO_CONSOLE_CONFIG_SIZE = 12
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

# --- §8.2 the /dev/lguest register block (i386 struct pt_regs offsets) -------------------
class PtRegs:
    BX = 0
    CX = 4
    DX = 8
    SI = 12
    DI = 16
    BP = 20
    AX = 24
    DS = 28
    ES = 32
    FS = 36
    GS = 40
    IP = 48
    CS = 52
    FLAGS = 56
    SP = 60
    SS = 64


SETTABLE_PT_REGS = frozenset(
    {PtRegs.BX, PtRegs.CX, PtRegs.DX, PtRegs.SI, PtRegs.DI, PtRegs.BP, PtRegs.AX, PtRegs.IP, PtRegs.SP}
)

# --- ELF (§3.2) -------------------------------------------------------------------------
ELF_MAGIC = b"\x7fELF"
ET_EXEC = 2
EM_386 = 3
ELF_PHENTSIZE_32 = 32
ELF_MAX_PHNUM = 2048


def u32(data: bytes | bytearray | memoryview, offset: int) -> int:
    """Little-endian u32 at `offset`: the only byte order this ABI knows."""
    return struct.unpack_from("<I", data, offset)[0]


# --- loader additions ---
# §3.2 / §3.3 / §8.1: numbers the Launcher's loader and command line need.
COMMAND_LINE_SIZE = 2048  # i386 Linux copies this many bytes of command line, NUL included
SETUP_SECTOR_SIZE = 512  # bzImage: the real-mode setup is counted in 512-byte sectors
SETUP_SECTS_DEFAULT = 4  # boot protocol: a setup_sects of 0 means 4
ELF_EHDR_SIZE_32 = 52  # sizeof(Elf32_Ehdr): the bytes the Launcher looks at first
ELFCLASS32 = 1  # e_ident[EI_CLASS]
ELFDATA2LSB = 1  # e_ident[EI_DATA]: little endian
PT_LOAD = 1
E820_ENTRY_FORMAT = "<QQI"  # struct e820entry { u64 addr; u64 size; u32 type; } (20 bytes, packed)
# Guest memory sizes the Launcher accepts (policy, in MiB).  The ceiling keeps RAM, the 1 MiB
# gap and the MMIO windows well below SWITCHER_ADDR; the floor leaves room above the
# conventional low 1 MiB for a kernel.
MIN_GUEST_MEM_MIB = 2
MAX_GUEST_MEM_MIB = 3072
