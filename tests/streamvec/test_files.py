"""Crash-safe local files: atomic replacement, no temp left behind, folders installed once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamvec import files


def test_write_atomic_replaces_text_and_bytes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "config.properties"
    files.write_atomic(target, "a=1\n", durable=False)
    files.write_atomic(target, b"a=2\n")
    assert target.read_bytes() == b"a=2\n"
    assert os.listdir(tmp_path) == [target.name]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "marker"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == [target.name]


def test_temp_names_sit_beside_their_target_and_never_repeat(tmp_path: Path) -> None:
    first, second = files.temp_path(tmp_path / "seg"), files.temp_path(tmp_path / "seg")
    assert first != second and first.parent == tmp_path
    assert first.name.startswith(f"{files.TMP_PREFIX}seg-{os.getpid()}-")


def test_install_dir_keeps_a_valid_folder_and_replaces_a_bad_one(tmp_path: Path) -> None:
    final = tmp_path / "folder"

    def staged(text: str) -> Path:
        tmp = files.temp_path(final)
        tmp.mkdir()
        (tmp / "data").write_text(text)
        return tmp

    assert files.install_dir(staged("one"), final, lambda p: True) is True
    kept = staged("two")
    assert files.install_dir(kept, final, lambda p: True) is False  # the valid one stays
    files.remove(kept)
    assert files.install_dir(staged("three"), final, lambda p: False) is True
    assert (final / "data").read_text() == "three"
    assert os.listdir(tmp_path) == ["folder"]
