"""Atomic writes, so a run killed at any moment never leaves a half-written checkpoint behind."""

from __future__ import annotations

import contextlib
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
        if target.exists() and _exchange(tmp, target):
            return  # `tmp` now holds the old contents, removed below
        backup = None
        if target.exists():
            # Without an atomic exchange a kill between these two renames leaves only the backup.
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
        os.replace(tmp, target)
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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
