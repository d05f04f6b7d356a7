"""Draw a `--trace-file` timeline as an SVG, with nothing but the standard library.

    python -m lguest.debug.svg <trace.json> <out.svg>

The run is cut into columns of equal time.  The top band stacks, per column,
how the vCPU's time went: Guest code in the emulator, or the Host's work by kind
of exit.  Below it, one row per kind of event (hypercalls, traps, interrupts,
device requests), darker where there are more, and the exits/s counter as a line.
It is the picture in the README; Perfetto shows the same file in full.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from lguest import abi

WIDTH, LEFT, COLUMNS = 960, 150, 400
BAND, ROW, GAP = 140, 22, 8
HCALLS = {h.name for h in abi.Hcall}
SHARES = (("emulating (Guest)", "#4caf50"), ("hypercall", "#1e88e5"), ("trap", "#fb8c00"),
          ("page fault", "#e53935"), ("kick", "#9e9e9e"))
ROWS = (("hypercall", "hypercalls", "#1e88e5"), ("trap", "traps", "#fb8c00"),
        ("interrupt", "interrupts", "#8e24aa"), ("device", "device requests", "#00897b"))


def share_of(event: dict) -> str:
    if event["cat"] == "guest":
        return "emulating (Guest)"
    return "hypercall" if event["name"] in HCALLS else event["name"]


def render(document: dict) -> str:
    events = [e for e in document["traceEvents"] if e.get("ph") != "M"]
    end = max(e["ts"] + e.get("dur", 0) for e in events)
    step = end / COLUMNS
    scale = (WIDTH - LEFT - 10) / COLUMNS
    shares = [Counter() for _ in range(COLUMNS)]
    for e in events:
        if e["ph"] == "X":
            _spread(shares, share_of(e), e["ts"], e["ts"] + e["dur"], step)
    parts = [_band(shares, step, scale)]
    y = BAND + GAP + 20
    for cat, label, colour in ROWS:
        counts = Counter(min(int(e["ts"] / step), COLUMNS - 1) for e in events if e.get("cat") == cat)
        parts.append(_row(counts, y, label, colour, scale))
        y += ROW + 4
    rate = [(e["ts"], e["args"]["exits"]) for e in events if e["name"] == "exits/s"]
    parts.append(_line(rate, y + 4, end, "exits/s"))
    height = y + 70
    axis = _axis(end, height - 18)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>')
    return "\n".join([head, *parts, axis, "</svg>"]) + "\n"


def _spread(shares: list[Counter], name: str, begin: float, end: float, step: float) -> None:
    """Add a slice's time to every column it overlaps."""
    column = int(begin / step)
    while column < COLUMNS and begin < end:
        edge = min(end, (column + 1) * step)
        shares[column][name] += edge - begin
        begin, column = edge, column + 1


def _band(shares: list[Counter], step: float, scale: float) -> str:
    out = ['<text x="4" y="14">where the vCPU\'s time went</text>']
    for column, share in enumerate(shares):
        y = 20.0
        for name, colour in SHARES:
            h = BAND * share[name] / step
            if h > 0.05:
                out.append(f'<rect x="{LEFT + column * scale:.1f}" y="{y:.1f}" width="{scale:.2f}" '
                           f'height="{h:.1f}" fill="{colour}"/>')
                y += h
    for i, (name, colour) in enumerate(SHARES):
        out.append(f'<rect x="4" y="{30 + 18 * i}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="18" y="{39 + 18 * i}">{name}</text>')
    return "\n".join(out)


def _row(counts: Counter, y: int, label: str, colour: str, scale: float) -> str:
    most = max(counts.values(), default=1)
    out = [f'<text x="4" y="{y + 15}">{label} ({sum(counts.values())})</text>']
    for column, n in sorted(counts.items()):
        out.append(f'<rect x="{LEFT + column * scale:.1f}" y="{y}" width="{max(scale, 1):.2f}" '
                   f'height="{ROW}" fill="{colour}" fill-opacity="{0.15 + 0.85 * n / most:.2f}"/>')
    return "\n".join(out)


def _line(points: list[tuple[float, int]], y: int, end: float, label: str) -> str:
    top = max((v for _, v in points), default=1) or 1
    width = WIDTH - LEFT - 10
    path = " ".join(f"{LEFT + width * t / end:.1f},{y + 40 - 40 * v / top:.1f}" for t, v in points)
    return (f'<text x="4" y="{y + 24}">{label} (max {top})</text>'
            f'<polyline points="{path}" fill="none" stroke="#37474f" stroke-width="1.5"/>')


def _axis(end: float, y: int) -> str:
    width = WIDTH - LEFT - 10
    ticks = []
    seconds = end / 1e6
    unit = max(0.1, round(seconds / 8, 1))
    t = 0.0
    while t <= seconds:
        x = LEFT + width * t / seconds
        ticks.append(f'<line x1="{x:.1f}" y1="{y - 6}" x2="{x:.1f}" y2="{y}" stroke="black"/>'
                     f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle">{t:.1f} s</text>')
        t += unit
    return f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + width}" y2="{y}" stroke="black"/>' + "".join(ticks)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lguest.debug.svg <trace.json> <out.svg>", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
