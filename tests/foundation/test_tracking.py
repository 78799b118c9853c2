"""RunTracker's MLflow and W&B backends (Ray's `setup_mlflow` / `setup_wandb`): a local MLflow file
store and W&B offline mode must hold exactly what `metrics.jsonl` holds, for the tracker alone, a
resumed tracker, and a tiny SFT run on Ray Train (rank-0 worker logs, the driver attaches the final
checkpoint). Bad values in `logging.mlflow` / `logging.wandb` fail in one line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chimed_ray.config import SFTConfig, load_config
from chimed_ray.config.common import MLflowConfig, TrackingConfig, WandbConfig
from chimed_ray.config.loader import ConfigError
from chimed_ray.utils.tracking import RunTracker, read_run_info

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture()
def offline_wandb(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "wandb_dir"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(directory))
    return directory


def _tracking(tmp_path: Path) -> TrackingConfig:
    mlflow = MLflowConfig(tracking_uri=f"file://{tmp_path}/mlruns", experiment="tests", log_artifacts=True)
    return TrackingConfig(mlflow, WandbConfig(project="chimed-tests", mode="offline"))


def _assert_same_everywhere(output_dir: Path, tracked_runs, steps: list[int]) -> dict:
    info = read_run_info(output_dir)
    expected = tracked_runs.jsonl(output_dir)
    assert sorted(expected) == steps and all(expected.values())
    flat = tracked_runs.flat(expected)
    mlflow = tracked_runs.mlflow(info["mlflow"]["tracking_uri"], info["mlflow"]["run_id"])
    assert tracked_runs.flat(mlflow) == pytest.approx(flat)
    assert tracked_runs.flat(tracked_runs.wandb(info["wandb"]["dir"])) == pytest.approx(flat)
    return info


def test_tracker_runs_hold_the_jsonl_metrics_and_resume_the_same_runs(tmp_path, offline_wandb, tracked_runs):
    from mlflow import MlflowClient

    output, tracking = tmp_path / "run", _tracking(tmp_path)
    tracker = RunTracker(output, 4, tensorboard=False, progress_bar=False, tracking=tracking,
                         run_config={"optim": {"lr": 0.001}, "stage": "sft"}, run_name="unit")
    for step in (1, 2, 3):
        tracker.log(step, {"train/loss": 3.0 / step, "train/lr": 0.001 * step})
    tracker.log(3, {"eval/loss": 2.5})  # a second line for one step, as train + eval do
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    tracker.log_artifacts(checkpoint)
    tracker.close()
    first = _assert_same_everywhere(output, tracked_runs, [1, 2, 3])
    assert str(first["wandb"]["dir"]).startswith(str(offline_wandb))

    resumed = RunTracker(output, 4, initial_step=3, tensorboard=False, progress_bar=False, tracking=tracking,
                         run_config={"optim": {"lr": 0.001}, "stage": "sft", "resume": True})
    resumed.log(4, {"train/loss": 0.5, "train/lr": 0.004})
    resumed.close()
    assert read_run_info(output)["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    client = MlflowClient(first["mlflow"]["tracking_uri"])
    run = client.get_run(first["mlflow"]["run_id"])
    assert run.data.params["optim/lr"] == "0.001" and run.data.params["stage"] == "sft"
    assert [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "final")] == ["final/config.json"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logging.mlflow.tracking_uri=ftp://host/x"], "logging.mlflow.tracking_uri: expected file:///dir"),
        (["logging.mlflow.tracking_uri=/tmp/mlruns"], "logging.mlflow.tracking_uri: expected file:///dir"),
        (["logging.mlflow.tracking_uri=http://mlflow:5000", "logging.mlflow.experiment=' '"],
         "logging.mlflow.experiment: must not be empty"),
        (["logging.mlflow.log_artifacts=true"], "logging.mlflow.log_artifacts: needs logging.mlflow.tracking_uri"),
        (["logging.mlflow.log_artifacts=maybe"], "logging.mlflow.log_artifacts: expected true/false"),
        (["logging.wandb.mode=cloud"], "logging.wandb.mode: expected one of ['online', 'offline', 'disabled']"),
        (["logging.wandb.project=team/run"], "logging.wandb.project: a W&B project name cannot contain /"),
        (["logging.wandb.entity=me"], "logging.wandb.entity: unknown key"),
    ],
)
def test_tracking_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(SFTConfig, CONFIGS / "sft" / "tiny.yaml", overrides)


@pytest.mark.slow
def test_tiny_sft_logs_the_same_metrics_to_mlflow_and_wandb(ray_cluster, tiny_checkpoint, tmp_path, offline_wandb,
                                                            tracked_runs):
    from mlflow import MlflowClient

    from chimed_ray.trainers.launch import run_ray_train

    config = load_config(SFTConfig, CONFIGS / "sft" / "tiny.yaml", [
        f"model.path={tiny_checkpoint}", f"output_dir={tmp_path / 'sft'}", "optim.max_steps=3", "logging.log_every=1",
        "logging.eval_every=3", "logging.save_every=0", "logging.progress_bar=false", "logging.tensorboard=false",
        f"logging.mlflow.tracking_uri=file://{tmp_path}/mlruns", "logging.mlflow.log_artifacts=true",
        "logging.wandb.project=chimed-tests", "logging.wandb.mode=offline",
    ])
    final = run_ray_train("sft", config)
    info = _assert_same_everywhere(tmp_path / "sft", tracked_runs, [1, 2, 3])
    client = MlflowClient(info["mlflow"]["tracking_uri"])
    run = client.get_run(info["mlflow"]["run_id"])
    assert run.data.params["optim/max_steps"] == "3" and run.info.run_name == "sft"
    assert "eval/loss" in run.data.metrics
    uploaded = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "final")}
    assert {path.name for path in final.iterdir()} <= uploaded and "config.json" in uploaded
