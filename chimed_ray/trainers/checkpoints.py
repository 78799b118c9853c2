"""Checkpoints of the Ray Train stages: what each rank writes, how completeness is proven, and
which checkpoint a restarted or resumed run loads.

Every rank writes a manifest (relative path -> size) of the files it put into the checkpoint.
Ray Train registers a checkpoint in its run snapshot only when the controller processes the
report, so a worker killed right after uploading can leave a complete checkpoint that the
snapshot does not list yet. On restart we take the newest checkpoint that is either registered
or proven complete by all manifests, so nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEEPSPEED_DIR, HF_DIR, STATE_FILE, MANIFEST_DIR, CKPT_TAG = "deepspeed", "hf", "trainer_state.json", "manifest", "state"


@dataclass
class TrainState:
    """Where the run is: optimizer steps done, and the data position (epoch, micro-batch)."""

    step: int = 0
    epoch: int = 0
    micro_step: int = 0
    tokens: float = 0.0


def _write_manifest(directory: Path, rank: int) -> None:
    files = {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    (directory / MANIFEST_DIR).mkdir(exist_ok=True)
    (directory / MANIFEST_DIR / f"rank_{rank}.json").write_text(json.dumps(files, indent=0))


def is_complete(directory: Path, world_size: int) -> bool:
    """True if every rank's manifest is present and every file it lists has the listed size."""
    for rank in range(world_size):
        manifest = directory / MANIFEST_DIR / f"rank_{rank}.json"
        if not manifest.is_file():
            return False
        try:
            files = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return False
        for relative, size in files.items():
            path = directory / relative
            if not path.is_file() or path.stat().st_size != size:
                return False
    return (directory / STATE_FILE).is_file()


def checkpoint_step(directory: Path) -> int:
    """The optimizer step recorded in a checkpoint's trainer state (-1 if unreadable)."""
    try:
        return int(json.loads((directory / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def latest_complete(run_dir: Path, world_size: int) -> Path | None:
    """The newest complete checkpoint directory under a local Ray Train run directory."""
    if not run_dir.is_dir():
        return None
    complete = [d for d in run_dir.glob("checkpoint_*") if d.is_dir() and is_complete(d, world_size)]
    return max(complete, key=checkpoint_step, default=None)


def save_checkpoint(task, engine, tokenizer, state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Write DeepSpeed state (every rank), the HF model and trainer state (rank 0), each rank's
    manifest, then hand the directory to `ray.train.report`, which uploads it to storage."""
    import ray.train

    from chimed_ray.trainers.engine import gathered_state_dict

    with tempfile.TemporaryDirectory(prefix="chimed-ckpt-") as tmp:
        directory = Path(tmp)
        engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=CKPT_TAG, client_state=asdict(state))
        full_state = gathered_state_dict(engine)
        if rank == 0:
            task.save_model(engine.module, full_state, tokenizer, directory / HF_DIR)
            (directory / STATE_FILE).write_text(json.dumps({**asdict(state), **metrics}, indent=2))
        _write_manifest(directory, rank)
        ray.train.report({**metrics, "step": state.step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _local_run_dir(storage_path: str, run_name: str) -> Path | None:
    if "://" in storage_path:
        return None
    return Path(storage_path) / run_name


def restore_checkpoint(engine, storage_path: str, run_name: str, world_size: int) -> TrainState | None:
    """Load the newest usable checkpoint into `engine`: Ray's registered one, or a newer complete
    one found in local storage. Returns the restored state, or None for a fresh start."""
    import ray.train

    registered = ray.train.get_checkpoint()
    run_dir = _local_run_dir(storage_path, run_name)
    found = latest_complete(run_dir, world_size) if run_dir is not None else None
    with registered.as_directory() if registered is not None else contextlib.nullcontext() as registered_dir:
        candidates = [Path(d) for d in (registered_dir, found) if d is not None]
        if not candidates:
            return None
        directory = max(candidates, key=checkpoint_step)
        _, client_state = engine.load_checkpoint(
            str(directory / DEEPSPEED_DIR), tag=CKPT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    fields = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in (client_state or {}).items() if k in fields})
