"""atomic.py: files and folders are replaced in one step and flushed to disk before they appear."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import recdistill.atomic as atomic
from recdistill.atomic import atomic_directory, atomic_path, recover_directory


def _write_version(folder: Path, version: int, files: int = 3) -> None:
    for i in range(files):
        (folder / f"f{i}.txt").write_text(f"{version}\n" * 50)
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_text(str(version))


def _complete(folder: Path) -> int | None:
    """The version of a complete folder; None if ``folder`` is missing or incomplete/mixed."""
    try:
        names = sorted(os.listdir(folder))
        if names != ["f0.txt", "f1.txt", "f2.txt", "sub"]:
            return None
        versions = {(folder / f"f{i}.txt").read_text().split()[0] for i in range(3)}
        versions.add((folder / "sub" / "deep.txt").read_text())
    except FileNotFoundError:
        return None
    return int(versions.pop()) if len(versions) == 1 else None


def test_new_and_replaced_folder_leave_nothing_else(tmp_path):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    assert _complete(dest) == 1
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 2)
    assert _complete(dest) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folders left
    assert oct(dest.stat().st_mode & 0o777) == oct(0o755)


def test_failed_block_leaves_the_old_folder(tmp_path):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(dest) as tmp:
            _write_version(tmp, 2)
            raise RuntimeError("boom")
    assert _complete(dest) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_destination_is_complete_after_every_filesystem_step(tmp_path, monkeypatch):
    """Deterministic: after each rename/delete the writer makes, the destination is a complete folder."""
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    seen: list[int | None] = []

    def checked(fn):
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            seen.append(_complete(dest))
            return result
        return wrapper

    for name in ("rename", "replace"):
        monkeypatch.setattr(atomic.os, name, checked(getattr(os, name)))
    monkeypatch.setattr(atomic, "exchange_paths", checked(atomic.exchange_paths))
    monkeypatch.setattr(atomic.shutil, "rmtree", checked(atomic.shutil.rmtree))
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 2)
    monkeypatch.undo()
    assert seen and None not in seen, seen
    assert seen[-1] == 2 and _complete(dest) == 2


def test_concurrent_reader_always_sees_a_complete_folder(tmp_path):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 0)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = (dest / "f0.txt").read_text()
                if not text.endswith("\n") or len(set(text.split())) != 1:
                    bad.append(f"partial file {text!r}")
            except FileNotFoundError as exc:
                bad.append(f"missing: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 60):
            with atomic_directory(dest) as tmp:
                _write_version(tmp, version)
    finally:
        stop.set()
        thread.join()
    assert not bad, bad[:3]
    assert _complete(dest) == 59


def test_files_and_folders_are_fsynced_before_the_swap(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    events: list[tuple[str, str]] = []
    real_fsync, real_exchange = os.fsync, atomic.exchange_paths

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def exchange(a, b):
        events.append(("swap", str(a)))
        return real_exchange(a, b)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic, "exchange_paths", exchange)
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 2)
        tmp_name = str(tmp)
    monkeypatch.undo()
    swap = events.index(("swap", tmp_name))
    before = {path for kind, path in events[:swap]}
    for rel in ("f0.txt", "f1.txt", "f2.txt", "sub/deep.txt", "sub", ""):
        assert os.path.join(tmp_name, rel).rstrip("/") in before, rel
    assert ("fsync", str(tmp_path)) in events[swap:]  # the parent folder, after the swap


def test_atomic_path_fsyncs_file_and_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                        real_fsync(fd))[1])
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
        tmp_name = str(tmp)
    monkeypatch.undo()
    assert synced == [tmp_name, str(tmp_path)]
    assert (tmp_path / "a.json").read_text() == "{}"


def test_fallback_without_exchange_and_crash_recovery(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    monkeypatch.setattr(atomic, "exchange_paths", lambda a, b: False)
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 2)
    assert _complete(dest) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a crash between the two renames of the fallback leaves the old folder at .out.old: put back
    os.rename(dest, tmp_path / ".out.old")
    assert recover_directory(dest) and _complete(dest) == 2
    os.rename(dest, tmp_path / ".out.old")
    with atomic_directory(dest) as tmp:  # the next writer recovers first, then replaces
        _write_version(tmp, 3)
    assert _complete(dest) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_destination_symlink_is_replaced_by_the_folder(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    dest = tmp_path / "out"
    dest.symlink_to(target)
    with atomic_directory(dest) as tmp:
        _write_version(tmp, 1)
    assert not dest.is_symlink() and _complete(dest) == 1
    assert (target / "keep.txt").read_text() == "user data"  # what the link pointed to is not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]
