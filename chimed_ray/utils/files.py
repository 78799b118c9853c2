"""Atomic, durable writes, so neither a kill nor a power loss ever leaves a half-written
checkpoint behind, and UTF-8 reads that name the file and line of a mis-encoded byte.

Durability order (what survives an OS crash): every file is fsynced, then every directory holding
them, then the rename that publishes them, then the parent directory that records the rename.
A pointer such as PPO's `latest` is written only after the directory it names is durable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


class InputError(ValueError):
    """A user-supplied file or directory is missing or malformed; the message names it."""


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    If the body raises, the temporary directory is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists() and _exchange(tmp, target):
            fsync_directory(target.parent)
            return  # `tmp` now holds the old contents, removed below
        backup = None
        if target.exists():
            # Without an atomic exchange a kill between these two renames leaves only the backup.
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
        os.replace(tmp, target)
        fsync_directory(target.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), so there
    is no moment where the old directory is gone and the new one not yet in place. False where
    the OS or file system does not support it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def fsync_directory(directory: str | Path) -> None:
    """Make the entries of `directory` (names created, renamed or removed) durable. File systems
    that cannot fsync a directory (some FUSE and network mounts say EINVAL) are left as they are."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Fsync every file under `root`, then each directory bottom-up, `root` last. Files written by
    other processes (DeepSpeed workers) are flushed too: fsync acts on the file, not the handle."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename, durably (the file is
    fsynced before the rename, the directory after it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomically write `data` as pretty UTF-8 JSON."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def absolute_path(path: str) -> str:
    """Make a local path absolute so Ray workers (another cwd) find it; URIs and "" stay as they are."""
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def require_dir(path: str | Path, what: str) -> Path:
    """Return `path` if it is a directory, else raise InputError naming it and what it should be."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {what} directory not found")
    return path


def read_utf8(path: str | Path) -> str:
    """The text of `path`, or InputError naming the file, line and byte that are not UTF-8.

    Chinese data often arrives in GBK; the message says so when the bytes decode as GBK.
    A UTF-8 byte-order mark is accepted and dropped.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad_line = raw[raw.rfind(b"\n", 0, exc.start) + 1 : (raw.find(b"\n", exc.start) + 1 or len(raw))]
        fix = "it looks like GBK: convert it with `iconv -f GBK -t UTF-8`" if _decodes(bad_line, "gbk") else "save it as UTF-8"
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); {fix}"
        ) from None


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True
