"""The embedded default: the Chinese medical data bundled inside the package."""

from __future__ import annotations

from pathlib import Path

from chimed_ray.utils.files import InputError

DATA_ROOT = Path(__file__).resolve().parent.parent / "resources" / "data"


def embedded_files(kind: str, split: str = "train") -> list[Path]:
    """Bundled files for `kind` (pretrain, sft, preference, eval) and `split` (train, eval)."""
    path = DATA_ROOT / kind / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: bundled {kind}/{split} data is missing from the package")
    return [path]


def embedded_path(relative: str) -> Path:
    """Path of a bundled file, e.g. `eval/mcq.jsonl`."""
    path = DATA_ROOT / relative
    if not path.exists():
        raise InputError(f"{path}: bundled data file is missing from the package")
    return path
