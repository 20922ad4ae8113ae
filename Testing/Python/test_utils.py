from pathlib import Path

import pytest

from vmambax.utils import atomic_dir, atomic_path


def test_atomic_path_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "out" / "notes.txt"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".txt")
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.txt"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "case"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (target / "a.txt").read_text() == "x"
