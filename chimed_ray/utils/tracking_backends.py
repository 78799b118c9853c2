"""Where `RunTracker` sends metrics besides `metrics.jsonl`: TensorBoard, MLflow and W&B.

MLflow and W&B go through Ray's own integrations, `ray.air.integrations.mlflow.setup_mlflow` and
`ray.air.integrations.wandb.setup_wandb`, the calls Ray documents for Ray Train V2 (inside the
training function, on rank 0; the Tune `*LoggerCallback`s do not apply to Train V2). The same
calls serve the drivers of PPO, rejection sampling and eval, which are not in a Train session.
Each backend can reopen its run by id, so a resumed run keeps one MLflow / W&B run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol

from chimed_ray.config.common import MLflowConfig, WandbConfig


class MetricsBackend(Protocol):
    """One destination of logged steps."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_artifacts(self, directory: Path, name: str) -> None: ...

    def run_info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class TensorBoardBackend:
    """Scalars under `<output_dir>/tensorboard`."""

    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_artifacts(self, directory: Path, name: str) -> None:
        pass

    def run_info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.writer.close()


def mlflow_key(key: str) -> str:
    """`key` with the characters MLflow refuses in metric names replaced by `_`."""
    return re.sub(r"[^\w\-. /:]", "_", key)


class MLflowBackend:
    """An MLflow run: the config as params at start, metrics at their steps, artifacts on request."""

    def __init__(self, config: MLflowConfig, run_name: str, params: dict[str, Any], resume_run_id: str = "") -> None:
        from ray.air.integrations.mlflow import setup_mlflow

        self.log_artifacts_enabled = config.log_artifacts
        allow_file_store(config.tracking_uri)
        if resume_run_id:
            import mlflow

            # setup_mlflow keeps an active run: reopening it first continues the same run.
            mlflow.set_tracking_uri(config.tracking_uri)
            mlflow.start_run(run_id=resume_run_id)
        self.mlflow = setup_mlflow(
            # A resumed run has its params already, and MLflow refuses to change one (`resume`).
            config=None if resume_run_id else params, tracking_uri=config.tracking_uri, experiment_name=config.experiment,
            # RunTracker opens backends on rank 0 only; outside Ray Train there is no rank to check.
            run_name=run_name, create_experiment_if_not_exists=True, rank_zero_only=False,
        )
        self.run_id = self.mlflow.active_run().info.run_id
        self.tracking_uri = config.tracking_uri

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step=step)

    def log_artifacts(self, directory: Path, name: str) -> None:
        if self.log_artifacts_enabled and directory.is_file():
            self.mlflow.log_artifact(str(directory), artifact_path=name)
        elif self.log_artifacts_enabled:
            self.mlflow.log_artifacts(str(directory), artifact_path=name)

    def run_info(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def close(self) -> None:
        self.mlflow.end_run()


def allow_file_store(tracking_uri: str) -> None:
    """MLflow 3 refuses `file:` stores unless told otherwise; a configured `file:` URI says so."""
    if tracking_uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"


def attach_mlflow_artifacts(config: MLflowConfig, run_id: str, directory: Path, name: str) -> None:
    """Upload `directory` into an MLflow run that has ended (e.g. a Ray Train worker's, from the driver)."""
    from mlflow import MlflowClient

    if config.log_artifacts and run_id:
        allow_file_store(config.tracking_uri)
        MlflowClient(config.tracking_uri).log_artifacts(run_id, str(directory), artifact_path=name)


class WandbBackend:
    """A W&B run: the config at start, metrics at their steps (offline mode needs no network)."""

    def __init__(self, config: WandbConfig, output_dir: Path, run_name: str, params: dict[str, Any],
                 resume_run_id: str = "") -> None:
        from ray.air.integrations.wandb import setup_wandb

        if config.mode != "online":
            # Ray checks for an API key unless the environment says offline/disabled.
            os.environ["WANDB_MODE"] = config.mode
        directory = os.environ.get("WANDB_DIR") or str(output_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        resume = {"id": resume_run_id, "resume": "allow"} if resume_run_id else {"resume": None}
        self.run = setup_wandb(config=params, project=config.project, mode=config.mode, dir=directory,
                               name=run_name, rank_zero_only=False, **resume)  # rank 0 already, as above

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_artifacts(self, directory: Path, name: str) -> None:
        pass  # checkpoints go to MLflow when asked; W&B gets metrics and config

    def run_info(self) -> dict[str, Any]:
        return {"project": self.run.project, "run_id": self.run.id, "dir": str(Path(self.run.dir).parent)}

    def close(self) -> None:
        self.run.finish()
