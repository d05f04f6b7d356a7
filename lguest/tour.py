"""`python -m lguest.tour`: the code, told as a quest, in reading order.

lguest was written to be read: its comments carried tags that a script pulled out in
order, so the source told one story from the Guest's first instruction to the Switcher.
We do the same.  A stop of the tour is a comment whose first line starts with a tag,

    # tour:H.30 The run loop
    # (more comment lines: the text of the stop)

in Python, or `/* tour:G.10 ... */` in C and assembly (puppy, the doorbell hook).  The
letter is the chapter, the number orders the stops within it.  The chapters follow the
order a newcomer needs them in: what the Guest asks for, how the Launcher builds a
machine, how the Host answers, how the devices are served, and last the Switcher, where
the emulated CPU's quirks live.  `docs/tour.md` is this command's output (a test keeps it
current, and checks that every tag written is one the collector reads).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE.parent  # a source checkout: lguest/, puppy/, docs/

CHAPTERS = {
    "G": "The Guest: what a paravirtualized kernel asks for, and why",
    "L": "The Launcher: a machine is built",
    "H": "The Host: the run loop, hypercalls, interrupts, segments and page tables",
    "D": "The devices: virtio over PCI",
    "S": "The Switcher: entering and leaving the emulated CPU",
}

TAG = re.compile(r"tour:([A-Z])\.(\d+)\b\s*(.*)")
PY_COMMENT = re.compile(r"^\s*#\s?(.*)$")


@dataclass(frozen=True)
class Stop:
    chapter: str
    number: int
    title: str
    text: tuple[str, ...]
    path: Path
    line: int

    @property
    def key(self) -> tuple[int, int]:
        return list(CHAPTERS).index(self.chapter), self.number


class TourError(ValueError):
    pass


def _python_stops(path: Path, lines: list[str]) -> list[Stop]:
    stops = []
    for index, line in enumerate(lines):
        comment = PY_COMMENT.match(line)
        tag = TAG.match(comment.group(1)) if comment else None
        if tag is None:
            continue
        body = []
        for following in lines[index + 1:]:
            more = PY_COMMENT.match(following)
            if more is None or TAG.match(more.group(1)):
                break
            body.append(more.group(1))
        stops.append(_stop(tag, body, path, index + 1))
    return stops


def _c_stops(path: Path, lines: list[str]) -> list[Stop]:
    stops = []
    for index, line in enumerate(lines):
        start = line.find("/* tour:")
        if start < 0:
            continue
        tag = TAG.match(line[start + 3:])
        if tag is None:
            continue
        first = tag.group(3)
        body: list[str] = []
        closed = first.endswith("*/")
        tag_title = first.removesuffix("*/").rstrip()
        for following in lines[index + 1:]:
            if closed:
                break
            text = following.strip()
            closed = text.endswith("*/")
            text = text.removesuffix("*/").rstrip().removeprefix("*").removeprefix(" ")
            if text or not closed:
                body.append(text)
        stops.append(Stop(tag.group(1), int(tag.group(2)), tag_title, tuple(body), path, index + 1))
    return stops


def _stop(tag: re.Match[str], body: list[str], path: Path, line: int) -> Stop:
    return Stop(tag.group(1), int(tag.group(2)), tag.group(3).strip(), tuple(body), path, line)


C_LIKE = (".c", ".h", ".S", ".ld")  # where a stop is a /* tour:... */ comment


def source_files(root: Path = SOURCE_ROOT) -> list[Path]:
    """Every file that may hold stops: lguest/ and, in a checkout, puppy/ (not build output)."""
    files: list[Path] = []
    for top in (root / "lguest", root / "puppy"):
        if top.is_dir():
            files += sorted(p for p in top.rglob("*")
                            if (p.suffix == ".py" or p.suffix in C_LIKE) and "build" not in p.parts
                            and p.resolve() != Path(__file__).resolve())
    return files


def collect(root: Path = SOURCE_ROOT) -> list[Stop]:
    """All stops in reading order; a bad chapter letter or a repeated tag is an error."""
    stops: list[Stop] = []
    for path in source_files(root):
        lines = path.read_text().splitlines()
        stops += _python_stops(path, lines) if path.suffix == ".py" else _c_stops(path, lines)
    seen: dict[tuple[str, int], Stop] = {}
    for stop in stops:
        if stop.chapter not in CHAPTERS:
            raise TourError(f"{stop.path}:{stop.line}: no chapter {stop.chapter!r}")
        if (stop.chapter, stop.number) in seen:
            other = seen[stop.chapter, stop.number]
            raise TourError(f"{stop.path}:{stop.line}: tour:{stop.chapter}.{stop.number} "
                            f"is already at {other.path}:{other.line}")
        seen[stop.chapter, stop.number] = stop
    return sorted(stops, key=lambda s: s.key)


INTRODUCTION = """\
# The tour

<!-- Generated by `python -m lguest.tour` from the tagged comments in the code; do not edit
by hand: change the comments and run `python -m lguest.tour > docs/tour.md`. -->

lguest was written to be read, and so is this.  The tour follows lguest's own quest: first
the Guest (what a paravirtualized kernel asks of its Host, and why), then the Launcher that
builds its machine, the Host that answers it, the devices, and last the Switcher, where the
emulated CPU's quirks live.  Read it from the top; each stop says which file it comes from.

Every stop is a comment in the code that starts with a tag, `tour:<chapter>.<number>`:
`# tour:H.30 ...` in Python, `/* tour:G.10 ... */` in C and assembly.  The letter is the
chapter (G, L, H, D, S, in that order) and the number orders the stops within it.  To read a
stop in its place, search the tree for its tag: `grep -rnw 'tour:G.10' lguest puppy`.
Numbers like §4.6 point into [abi.md](abi.md), the contract; [design.md](design.md) says how
the Host is built on the emulated CPU and why.
"""


def render(stops: list[Stop], root: Path = SOURCE_ROOT) -> str:
    """The tour as markdown: the introduction, then each chapter's stops in order."""
    out = [INTRODUCTION]
    chapter = None
    for stop in stops:
        if stop.chapter != chapter:
            chapter = stop.chapter
            out += [f"## {chapter}. {CHAPTERS[chapter]}", ""]
        where = stop.path.relative_to(root) if stop.path.is_relative_to(root) else stop.path
        out += [f"### {stop.title}", f"*`{where}`, `tour:{stop.chapter}.{stop.number}`*", ""]
        out += [line.rstrip() for line in stop.text]
        out.append("")
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def main() -> int:
    try:
        sys.stdout.write(render(collect()))
    except TourError as err:
        print(f"lguest.tour: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
