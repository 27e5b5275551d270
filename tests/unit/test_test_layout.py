"""The test tree itself: pytest imports test files by basename (rootdir mode), so two
files with one basename in different folders abort collection of the whole run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_basename_is_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert names, "no test files found"
    assert [name for name, count in names.items() if count > 1] == []
