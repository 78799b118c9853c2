"""Session-wide fixtures: one local Ray cluster and one tiny checkpoint for the whole test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the trained-tokenizer cache inside the test session so runs do not depend on ~/.cache.
os.environ.setdefault("CHIMED_RAY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one (starting Ray costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tokenizer():
    """The byte-level BPE tokenizer trained on the bundled corpus (with the ChiMed chat template)."""
    from chimed_ray.models import load_tokenizer

    return load_tokenizer("")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A freshly initialised tiny LLaMA saved as an HF checkpoint directory (safetensors)."""
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, save_hf_checkpoint

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=0)
    return save_hf_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


def _mlflow_history(tracking_uri: str, run_id: str) -> dict[int, dict[str, float]]:
    """step -> {metric: value} of one MLflow run, read back through the MLflow client."""
    from mlflow import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri)
    history: dict[int, dict[str, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for point in client.get_metric_history(run_id, key):
            history.setdefault(point.step, {})[key] = point.value
    return history


def _wandb_history(run_dir: str) -> dict[int, dict[str, float]]:
    """step -> {metric: value} of an offline W&B run, read from its `.wandb` log (W&B's LevelDB-style
    record log: 32 KiB blocks of records with a 7-byte header, a record split over blocks)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = next(Path(run_dir).glob("*.wandb")).read_bytes()
    position, records, pending = 7, [], b""  # the file starts with a 7-byte ":W&B" header
    while position + 7 <= len(data):
        left_in_block = 32768 - position % 32768
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # full, or the last piece of a split record
            records.append(pending)
    history: dict[int, dict[str, float]] = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = int(row.pop("_step", record.history.step.num))
            history.setdefault(step, {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return history


def _jsonl_history(output_dir: Path) -> dict[int, dict[str, float]]:
    from chimed_ray.utils.tracking import read_metrics

    history: dict[int, dict[str, float]] = {}
    for record in read_metrics(Path(output_dir) / "metrics.jsonl"):
        history.setdefault(int(record["step"]), {}).update({k: v for k, v in record.items() if k not in ("step", "time")})
    return history


def _flat(history: dict[int, dict[str, float]]) -> dict[tuple[int, str], float]:
    return {(step, key): value for step, metrics in history.items() for key, value in metrics.items()}


@pytest.fixture(scope="session")
def tracked_runs():
    """Readers of what a run logged: `mlflow(uri, run_id)`, `wandb(run_dir)` and `jsonl(output_dir)`,
    each as step -> {metric: value}; `flat` turns one into {(step, metric): value} for pytest.approx."""
    from types import SimpleNamespace

    return SimpleNamespace(mlflow=_mlflow_history, wandb=_wandb_history, jsonl=_jsonl_history, flat=_flat)
