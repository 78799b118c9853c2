"""A tiny PPO (GRPO on the rule reward) logging to a local MLflow file store and an offline W&B run:
both must hold exactly the metrics of `metrics.jsonl`, and MLflow the final policy as an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_tiny_ppo_logs_the_same_metrics_to_mlflow_and_wandb(ray_cluster, tiny_checkpoint, tmp_path, monkeypatch,
                                                            rlhf, tracked_runs):
    from mlflow import MlflowClient

    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig
    from chimed_ray.trainers.ppo import run_ppo
    from chimed_ray.utils.tracking import read_run_info

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    output = tmp_path / "ppo"
    config = load_config(PPOConfig, rlhf.config_path("ppo/tiny.yaml"), [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        "algorithm.advantage_estimator=grpo", "scale.policy.num_workers=1", "total_steps=2",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
        "rollout.max_prompt_length=64", "algorithm.mini_batch_size=4", "algorithm.ppo_epochs=1",
        "logging.progress_bar=false", "logging.tensorboard=false",
        f"logging.mlflow.tracking_uri=file://{tmp_path}/mlruns", "logging.mlflow.experiment=ppo-tests",
        "logging.mlflow.log_artifacts=true", "logging.wandb.project=chimed-tests", "logging.wandb.mode=offline",
    ])
    final = run_ppo(config)

    info = read_run_info(output)
    expected = tracked_runs.jsonl(output)
    assert sorted(expected) == [1, 2] and "reward/mean" in expected[1]
    flat = tracked_runs.flat(expected)
    for history in (tracked_runs.mlflow(info["mlflow"]["tracking_uri"], info["mlflow"]["run_id"]),
                    tracked_runs.wandb(info["wandb"]["dir"])):
        assert tracked_runs.flat(history) == pytest.approx(flat)
    assert info["wandb"]["dir"].startswith(str(tmp_path / "wandb_dir"))
    client = MlflowClient(info["mlflow"]["tracking_uri"])
    run = client.get_run(info["mlflow"]["run_id"])
    assert run.data.params["algorithm/advantage_estimator"] == "grpo"
    uploaded = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "final")}
    assert "config.json" in uploaded and {path.name for path in final.iterdir()} <= uploaded
