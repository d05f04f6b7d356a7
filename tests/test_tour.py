"""The tour (`python -m lguest.tour`): every tagged comment is reachable, in order, and
docs/tour.md is exactly what the command prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lguest import tour

ROOT = Path(__file__).resolve().parent.parent

# The chapters that must have stops.  Each chapter is written on its own branch; once all of
# them are merged this becomes `list(tour.CHAPTERS)`, and the tour is whole.
REQUIRED_CHAPTERS = list(tour.CHAPTERS)

# What a tag looks like to a human, including the ways of getting it wrong that the collector
# would silently skip: "tour: G.10", "Tour:G.10", "tour:G10", "tour:g.10"...
TAG_LIKE = re.compile(r"\btour\s*:", re.IGNORECASE)
SKIPPED_DIRS = {"build", "__pycache__"}


def tag_like_mentions() -> list[str]:
    """Every place in lguest/ and puppy/ that looks like a tag, whatever the file type."""
    found = []
    for top in ("lguest", "puppy"):
        for path in sorted((ROOT / top).rglob("*")):
            if (not path.is_file() or SKIPPED_DIRS & set(path.relative_to(ROOT).parts)
                    or path.resolve() == Path(tour.__file__).resolve()):
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue  # a binary (the doorbell hook, a built kernel)
            for number, line in enumerate(text.splitlines(), 1):
                found += [f"{path.relative_to(ROOT)}:{number}"] * len(TAG_LIKE.findall(line))
    return found


@pytest.fixture(scope="module")
def stops() -> list[tour.Stop]:
    return tour.collect(ROOT)


def test_the_tour_collects_without_a_repeated_tag_or_an_unknown_chapter(stops) -> None:
    assert stops
    assert len({(s.chapter, s.number) for s in stops}) == len(stops)
    assert {s.chapter for s in stops} <= set(tour.CHAPTERS)
    assert all(s.title for s in stops), [f"{s.path}:{s.line}" for s in stops if not s.title]


def test_every_tag_written_is_a_stop(stops) -> None:
    """A tag the collector cannot read would be a stop nobody reaches."""
    where = tag_like_mentions()
    collected = sorted(f"{s.path.relative_to(ROOT)}:{s.line}" for s in stops)
    assert sorted(where) == collected, sorted(set(where) ^ set(collected))


def test_every_required_chapter_has_stops(stops) -> None:
    assert set(REQUIRED_CHAPTERS) <= set(tour.CHAPTERS)
    present = {s.chapter for s in stops}
    assert [c for c in REQUIRED_CHAPTERS if c not in present] == []


def test_within_a_file_the_stops_come_in_reading_order(stops) -> None:
    by_file: dict[Path, list[tour.Stop]] = {}
    for stop in stops:
        by_file.setdefault(stop.path, []).append(stop)
    for path, in_file in by_file.items():
        keys = [s.key for s in sorted(in_file, key=lambda s: s.line)]
        assert keys == sorted(keys), f"{path.relative_to(ROOT)}: stops out of order"


def test_docs_tour_md_is_the_generated_tour(stops) -> None:
    expected = tour.render(stops, ROOT)
    assert (ROOT / "docs" / "tour.md").read_text() == expected, \
        "docs/tour.md is stale: python -m lguest.tour > docs/tour.md"


def test_the_command_prints_the_tour() -> None:
    run = subprocess.run([sys.executable, "-m", "lguest.tour"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == (ROOT / "docs" / "tour.md").read_text()


def test_a_repeated_tag_and_an_unknown_chapter_are_refused(tmp_path) -> None:
    """A repeated tag names both places; an unknown chapter names the letter."""
    guest = tmp_path / "puppy"
    guest.mkdir()
    (guest / "a.c").write_text("/* tour:G.10 One\n * text\n */\n")
    (guest / "b.S").write_text("/* tour:G.10 The same number */\n")
    with pytest.raises(tour.TourError, match=r"b\.S:1: tour:G\.10 is already at .*a\.c:1"):
        tour.collect(tmp_path)
    (guest / "b.S").write_text("/* tour:X.10 No such chapter */\n")
    with pytest.raises(tour.TourError, match=r"b\.S:1: no chapter 'X'"):
        tour.collect(tmp_path)


def test_stops_are_read_from_python_and_c_comments(tmp_path) -> None:
    (tmp_path / "lguest").mkdir()
    (tmp_path / "lguest" / "m.py").write_text(
        "x = 1\n# tour:H.20 Second\n# body of two\n#\n# lines\ny = 2\n# tour:H.10 First\n")
    (tmp_path / "puppy").mkdir()
    (tmp_path / "puppy" / "g.c").write_text(
        "int a;\n/* tour:G.10 Guest\n * line one\n *     code\n */\nint b;\n/* tour:G.20 Short */\n")
    got = [(s.chapter, s.number, s.title, s.text, s.line) for s in tour.collect(tmp_path)]
    assert got == [("G", 10, "Guest", ("line one", "    code"), 2), ("G", 20, "Short", (), 7),
                   ("H", 10, "First", (), 7), ("H", 20, "Second", ("body of two", "", "lines"), 2)]
