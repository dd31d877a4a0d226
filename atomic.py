"""Atomic writes: nothing recdistill writes is ever left half-written.

Guarantees (POSIX, local filesystems):

- :func:`atomic_path` (files): the content goes to a temporary name in the destination folder,
  is flushed and ``fsync``-ed, then ``os.replace``-d onto the destination, and the folder is
  ``fsync``-ed. A reader at any instant, and the file after a crash or power loss, is the old
  complete file or the new complete file.
- :func:`atomic_directory` (folders): the block fills a temporary sibling folder; every file in it,
  every sub-folder and the folder itself are ``fsync``-ed; then the folder is swapped with the
  destination in one step (Linux ``renameat2(RENAME_EXCHANGE)``; a plain ``rename`` when the
  destination does not exist yet) and the parent folder is ``fsync``-ed; the old content is then
  deleted. So ``path`` always exists once it has been written, and opening ``path/<file>`` at any
  instant finds the old complete folder or the new complete one. (A reader that reads several
  files over time can meet both versions; to read one version consistently, open the files
  quickly or hold an open descriptor of the folder and use paths relative to it.)
- Where the exchange is not available (not Linux, or a filesystem without ``RENAME_EXCHANGE``),
  the swap falls back to two renames (``path`` -> ``.path.old``, new -> ``path``): there is an
  instant with no ``path`` (a warning says so once), and a crash in it leaves the old folder at
  ``.path.old``, which the next :func:`atomic_directory` on ``path`` (or :func:`recover_directory`)
  puts back.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


log = logging.getLogger(__name__)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - some filesystems refuse fsync on folders
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; fsync it and rename it onto ``path`` if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
            fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}
_warned_fallback = False


def exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return False
    args = (_AT_FDCWD, os.fsencode(os.fspath(a)), _AT_FDCWD, os.fsencode(os.fspath(b)), _RENAME_EXCHANGE)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        result = fn(*args)
    else:  # pragma: no cover - glibc < 2.28
        number = _SYS_RENAMEAT2.get(platform.machine())
        if number is None:
            return False
        libc.syscall.restype = ctypes.c_long
        result = libc.syscall(ctypes.c_long(number), ctypes.c_int(args[0]), ctypes.c_char_p(args[1]),
                              ctypes.c_int(args[2]), ctypes.c_char_p(args[3]), ctypes.c_uint(args[4]))
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def _trash_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_directory(path: str | os.PathLike[str]) -> bool:
    """Put back the old folder a crash left at ``.NAME.old`` during a fallback swap; ``True`` if it did."""
    final = Path(path)
    trash = _trash_name(final)
    if not final.exists() and not final.is_symlink() and trash.is_dir():
        os.rename(trash, final)
        fsync_dir(final.parent)
        return True
    return False


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (folders after their content), then ``root``."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(folder)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; if the block succeeds, fsync it and swap it in for ``path`` atomically.

    See the module docstring for the guarantee: at any instant ``path`` is the old complete folder
    or the new complete one. If the block raises, ``path`` is untouched and the temporary folder removed.
    """
    global _warned_fallback
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700 folders, some writers 0600 files
        for child in tmp.rglob("*"):
            os.chmod(child, 0o755 if child.is_dir() else 0o644)
        _fsync_tree(tmp)
        if not final.exists() and not final.is_symlink():
            os.rename(tmp, final)  # nothing to replace: one rename
        elif exchange_paths(tmp, final):
            pass  # tmp now holds the old content, deleted below
        else:
            if not _warned_fallback:
                log.warning("atomic_directory: this system cannot exchange two folders atomically; replacing %s "
                            "with two renames (it is briefly absent)", final)
                _warned_fallback = True
            trash = _trash_name(final)
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(final, trash)
            os.rename(tmp, final)
            fsync_dir(final.parent)
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(final.parent)
    finally:
        if tmp.is_symlink():  # the destination was a symlink, exchanged for the new folder
            tmp.unlink()
        elif tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike[str], payload: Any, sort_keys: bool = False) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys, default=_jsonable) + "\n")
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)) or type(value).__name__ == "dtype":
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


class CorruptFileError(ValueError):
    """A file's bytes fail its own integrity check (a zip member's CRC-32, a recorded sha256)."""


def verify_zip_file(path: str | os.PathLike[str]) -> None:
    """Check every member of a zip archive against its CRC-32, e.g. a ``torch.save`` / Lightning
    checkpoint, which ``torch.load`` reads without checking: a flipped byte in a tensor would load
    silently. Raises :class:`CorruptFileError` naming ``path``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, UnicodeDecodeError,
            NotImplementedError, RuntimeError) as exc:
        raise CorruptFileError(f"{path} is corrupt: not a readable zip archive ({exc})") from None
    if bad is not None:
        raise CorruptFileError(f"{path} is corrupt: member {bad} fails its CRC-32 check")


def item_space_hash(item_ids: Any) -> str:
    """sha256 over the ordered raw item ids (item index ``i`` <-> ``item_ids[i - 1]``): the identity of
    an item-id space, shared by the signal cache, exported models and their runtime."""
    digest = hashlib.sha256()
    digest.update(str(len(item_ids)).encode())
    for raw in item_ids:
        digest.update(b"\x00" + str(raw).encode())
    return digest.hexdigest()

