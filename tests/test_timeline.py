"""`--trace-file` (a Chrome trace-event timeline) and `--stats=json`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import lguest

from lguest.debug.timeline import Timeline
from lguest.launcher.machine import build_machine
from lguest.launcher.options import parse_args


def stats_json(stderr: str) -> dict:
    (line,) = [line for line in stderr.splitlines() if line.startswith("{")]
    return json.loads(line)


def test_timeline_counts_equal_the_stats(puppy, tmp_path) -> None:
    trace = tmp_path / "boot.json"
    run = lguest("run", "--stats=json", f"--trace-file={trace}", "devices", "sleep=50", "procs")
    assert run.status == 0, run.stderr
    stats = stats_json(run.stderr)
    document = json.loads(trace.read_text())
    assert document["otherData"]["dropped_events"] == 0
    events = document["traceEvents"]
    by_cat = Counter(e.get("cat") for e in events)
    by_name = stats["hypercalls_by_name"]
    # LGUEST_INIT is traced but, as in the --stats line, not counted as a hypercall.
    assert by_cat["hypercall"] == sum(by_name.values()) == stats["hypercalls"] + by_name["LGUEST_INIT"]
    assert by_cat["interrupt"] == stats["interrupts"] == sum(stats["interrupts_by_irq"].values()) > 0
    faults = stats["exits_by_kind"].get("page fault", 0)
    assert by_cat["trap"] == sum(stats["traps_by_vector"].values()) + faults
    assert by_cat["guest"] == stats["world_switches"] == sum(stats["exits_by_kind"].values())
    # The processes' system calls: reflected by the Host on an exit, or by the CPU itself
    # (traps_reflected counts both) once SET_STACK's pages are known to the fill hook.
    assert stats["traps_reflected"] > 0
    # Every run came back to the Host (the last with SHUTDOWN), so the census saw them all.
    assert stats["seconds_by_category"]["emulating"] == pytest.approx(stats["seconds_emulating"], abs=1e-5)
    # Our Python hooks' time inside the emulator is the Host's, reported apart (issue 10).
    hooks = stats["seconds_by_category"]["hooks inside the emulator"]
    assert 0 < hooks == pytest.approx(stats["seconds_in_hooks"], abs=1e-3)
    slices = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 for e in slices) and {e["tid"] for e in slices} == {1, 2}
    # A trap the Host handles is charged to it; the CPU delivers puppy's system calls itself
    # once SET_STACK's pages are known to the fill hook, so there may be none.
    trap_exits = {"trap"} if stats["exits_by_kind"].get("trap") else set()
    assert {e["name"] for e in events if e.get("cat") == "host"} >= {"SET_CLOCKEVENT", "kick"} | trap_exits
    assert document["otherData"]["stats"]["hypercalls"] == stats["hypercalls"]
    # printk through the console's output queue: one request per write, with its bytes
    output = [e for e in events if e.get("cat") == "device" and e["name"] == "console output"]
    assert output and all(e["args"]["out_bytes"] > 0 for e in output)
    assert sum(e["args"]["out_bytes"] for e in output) <= len(run.stdout.encode())


def test_the_plain_stats_line_stays(puppy) -> None:
    run = lguest("run", "--stats", "sleep=10")
    assert run.status == 0
    assert " world switches, " in run.reason
    assert " s in the Host's hooks inside the emulator, " in run.reason
    assert not any(line.startswith("{") for line in run.stderr.splitlines())


def test_timeline_is_bounded(puppy) -> None:
    """A ring of the last N events; the drop count makes up the difference."""
    timeline = Timeline(limit=100)
    opts = parse_args(["run", "sleep=50"])
    machine = build_machine(opts, str(puppy), output=lambda data: None, tracer=timeline)
    machine.guest.run()
    machine.close()
    document = json.loads(json.dumps(timeline.document({})))
    kept = [e for e in document["traceEvents"] if e["ph"] != "M"]
    recorded = sum(document["otherData"]["recorded_by_category"].values())
    assert len(kept) == 100 < recorded
    assert document["otherData"]["dropped_events"] == recorded - 100
    assert kept[-1]["ts"] >= kept[0]["ts"]  # the tail of the run, in order


def test_unwritable_trace_file(tmp_path) -> None:
    run = lguest("run", f"--trace-file={tmp_path}/no/such/dir/t.json")
    assert run.status == 2
    assert run.reason == f"cannot write --trace-file {tmp_path}/no/such/dir/t.json: No such file or directory"
