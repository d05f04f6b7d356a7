"""Fuzzing the Host and the Launcher with a hostile Guest: `python -m lguest.fuzz`.

The contract says a misbehaving Guest is killed with a reason, and that a
traceback, a hang or exit 3 is always our bug.  This package looks for those.

How it is built, and why:

- The fuzz Guest (`guest/entry.S`, `guest/fuzz.c`) is real i386 code built with
  `gcc -m32` on first use (`kernel.py`), like the doorbell hook.  It takes
  `seed=` and `ops=` from its command line and performs that many operations
  drawn from a PRNG: hypercalls (mostly plausible arguments, sometimes fatal
  ones), async-ring entries, `int n`, ring-3 excursions and iret frames with odd
  EFLAGS (TF, NT, VM, AC, IOPL...) and selectors, PTE/PGD writes then touches,
  port I/O and PCI configuration, MMIO to the BAR0 windows, virtio handshakes
  and random descriptor chains.  Every IDT vector has a handler that counts the
  trap and resumes the loop, so a boot carries many operations instead of one.
- Dying is a legitimate outcome for it; looking like a hang is not.  So the
  Guest never lets its own code or data be written (by CPU or device DMA),
  irets only onto code written to be landed on, and HALTs only with a timer
  armed.  A run that does not end is then the Host's or the Launcher's fault.
- `fuzz_ops` sits at a fixed symbol; an in-process run reads it from Guest RAM
  however the Guest died, so "operations executed" is exact, not estimated.
- Throughput: a boot costs milliseconds in-process, so runs happen in worker
  processes (`worker.py`, one per core) that build the machine exactly as the
  `lguest` command does; the parent (`campaign.py`) keeps a watchdog per run
  and replaces a worker that hangs or dies.  Every Nth seed instead boots
  through the real `lguest` command, to check the exit status a user sees.
- Every failure is reported with its seed and the command that replays it;
  seeds are consecutive from `--seed`, so a campaign is reproducible.

The hypothesis layer over the virtio transport and queues lives in
`tests/test_virtio_fuzz.py`; the CI campaign and the harness's self-tests in
`tests/test_fuzz.py`.
"""
