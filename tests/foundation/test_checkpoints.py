"""Checkpoint completeness: a checkpoint counts only when every rank's files are all there."""

from __future__ import annotations

import json
from pathlib import Path

from chimed_ray.trainers.checkpoints import STATE_FILE, _write_manifest, checkpoint_step, is_complete, latest_complete


def _checkpoint(root: Path, name: str, step: int, world: int) -> Path:
    directory = root / name
    for rank in range(world):
        # Ranks upload into the same directory; each manifest lists only that rank's files.
        staging = root / f"{name}.rank{rank}"
        (staging / "deepspeed").mkdir(parents=True)
        (staging / "deepspeed" / f"optim_rank_{rank}.pt").write_bytes(b"x" * (10 + rank))
        if rank == 0:
            (staging / STATE_FILE).write_text(json.dumps({"step": step}))
        _write_manifest(staging, rank)
        for path in staging.rglob("*"):
            if path.is_file():
                target = directory / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    return directory


def test_complete_only_with_every_rank_and_full_sizes(tmp_path):
    directory = _checkpoint(tmp_path, "checkpoint_a", 4, world=2)
    assert is_complete(directory, 2) and checkpoint_step(directory) == 4
    assert not is_complete(directory, 3)  # a third rank's manifest is missing
    (directory / "deepspeed" / "optim_rank_1.pt").write_bytes(b"x")  # truncated upload
    assert not is_complete(directory, 2)


def test_latest_complete_skips_partial_uploads(tmp_path):
    _checkpoint(tmp_path, "checkpoint_1", 4, world=2)
    newer = _checkpoint(tmp_path, "checkpoint_2", 8, world=2)
    (newer / "manifest" / "rank_1.json").unlink()  # killed while rank 1 was still uploading
    assert latest_complete(tmp_path, 2) == tmp_path / "checkpoint_1"
    _checkpoint(tmp_path, "checkpoint_3", 12, world=2)
    assert latest_complete(tmp_path, 2) == tmp_path / "checkpoint_3"
    assert latest_complete(tmp_path / "missing", 2) is None
