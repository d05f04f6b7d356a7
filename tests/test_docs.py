"""The repository carries its own contract: every `§N.M` it cites is a section of
docs/abi.md, and nothing points outside the repository for it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABI = ROOT / "docs" / "abi.md"
# Where sections are cited: the code, the Guest, the docs, the tests and the README.
CITING = ["lguest", "puppy", "docs", "tests", "benchmarks", ".ci", "README.md", "setup.py", "pyproject.toml"]
TEXT_SUFFIXES = {".py", ".md", ".c", ".h", ".S", ".ld", ".toml", ".txt", ".cfg", ""}
BUILD_DIRS = {"build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
BUILT_KERNELS = ROOT / "lguest" / "guests"

# "§4.3", "§0", and both ends of a range such as "§4.4–4.6" or "§6.2-6.3".
CITATION = re.compile(r"§(\d+(?:\.\d+)?)(?:[–-](\d+(?:\.\d+)?))?")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.MULTILINE)
OUTSIDE = re.compile(r"shared/|\bDESIGN\.md|\bspec/lguest-abi|\bDESIGN\b")


def text_files() -> list[Path]:
    files = []
    for name in CITING:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        for file in path.rglob("*"):
            built = set(file.relative_to(ROOT).parts) & BUILD_DIRS or file.is_relative_to(BUILT_KERNELS)
            if file.is_file() and not built and file.suffix in TEXT_SUFFIXES:
                files.append(file)
    return files


def abi_sections() -> set[str]:
    return set(HEADING.findall(ABI.read_text()))


def test_abi_md_keeps_the_section_numbers_of_the_contract() -> None:
    sections = abi_sections()
    for top in range(12):
        assert str(top) in sections
    assert {"1.4", "3.6", "4.3", "4.7", "6.3", "7.3", "8.4", "9.1", "9.2"} <= sections
    assert "`§N.M`" in ABI.read_text().split("\n## 0.")[0], "abi.md must say what §N.M means"


def test_every_cited_section_exists_in_abi_md() -> None:
    sections = abi_sections()
    files = text_files()
    assert any(f.name == "core.py" for f in files) and any(f.suffix == ".c" for f in files)
    missing = []
    for file in files:
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                for section in filter(None, match.groups()):
                    if section not in sections:
                        missing.append(f"{file.relative_to(ROOT)}:{number}: §{section}")
    assert not missing, "sections cited but not in docs/abi.md:\n" + "\n".join(missing)


def test_citations_are_found_where_the_code_makes_them() -> None:
    cited = {m.group(1) for m in CITATION.finditer((ROOT / "lguest/host/core.py").read_text())}
    assert {"4.2", "4.3", "4.7"} <= cited


def test_nothing_refers_outside_the_repository_for_its_contract() -> None:
    outside = []
    for file in text_files():
        if file == Path(__file__).resolve():
            continue  # it names the old references to catch them
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                outside.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not outside, "references to documents outside the repository:\n" + "\n".join(outside)


def test_the_outside_pattern_catches_the_old_references() -> None:
    for old in ["../shared/spec/lguest-abi.md", "(DESIGN)", "shared/DESIGN.md"]:
        assert OUTSIDE.search(old), old
    assert not OUTSIDE.search("docs/design.md and docs/abi.md, a shared mapping")
