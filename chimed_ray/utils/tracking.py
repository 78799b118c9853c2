"""Run tracking on rank 0: the one place metrics are logged.

`RunTracker.log` writes each step to `<output_dir>/metrics.jsonl` (the record every other view is
checked against) and hands it to the configured backends (`tracking_backends.py`): TensorBoard,
MLflow and W&B through Ray's integrations. The backends' run ids go to `<output_dir>/tracking.json`,
so a resumed run continues the same runs and a driver can attach the final checkpoint afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimed_ray.utils.files import atomic_write_json

if TYPE_CHECKING:
    from chimed_ray.config.common import TrackingConfig
    from chimed_ray.utils.tracking_backends import MetricsBackend

TRACKING_FILE = "tracking.json"


class RunTracker:
    """Writes every logged step to `metrics.jsonl` and the configured backends, and shows a tqdm
    bar with the latest loss and tokens/s. Inactive (a no-op) on ranks other than 0.

    Args:
        tracking: the `logging` section's `mlflow` / `wandb` settings (None: neither).
        run_config: logged once as the MLflow params / W&B config of a new run.
        run_name: the MLflow / W&B run name (default: `description`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        active: bool = True,
        tensorboard: bool = True,
        progress_bar: bool = True,
        description: str = "train",
        tracking: TrackingConfig | None = None,
        run_config: dict[str, Any] | None = None,
        run_name: str = "",
    ) -> None:
        self.active = active
        self.output_dir = Path(output_dir)
        self._backends: list[MetricsBackend] = []
        self._bar = None
        if not active:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run logs again every step after its checkpoint: drop the earlier copies.
        truncate_metrics(self.output_dir / "metrics.jsonl", initial_step)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from chimed_ray.utils.tracking_backends import TensorBoardBackend

            self._backends.append(TensorBoardBackend(self.output_dir))
        if tracking is not None:
            self._open_tracking(tracking, run_name or description, run_config or {}, resume=initial_step > 0)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=description, dynamic_ncols=True)

    def _open_tracking(self, tracking: TrackingConfig, run_name: str, run_config: dict[str, Any], resume: bool) -> None:
        from chimed_ray.utils import tracking_backends as backends

        previous = read_run_info(self.output_dir) if resume else {}
        info: dict[str, Any] = {}
        if tracking.mlflow.enabled:
            mlflow = backends.MLflowBackend(tracking.mlflow, run_name, run_config,
                                            previous.get("mlflow", {}).get("run_id", ""))
            self._backends.append(mlflow)
            info["mlflow"] = mlflow.run_info()
        if tracking.wandb.enabled:
            wandb = backends.WandbBackend(tracking.wandb, self.output_dir, run_name, run_config,
                                          previous.get("wandb", {}).get("run_id", ""))
            self._backends.append(wandb)
            info["wandb"] = wandb.run_info()
        if info:
            atomic_write_json(self.output_dir / TRACKING_FILE, info)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` for `step` and move the progress bar to `step`."""
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for backend in self._backends:
            backend.log(step, values)
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items() if k in _SHOWN}
            if shown:
                self._bar.set_postfix(shown, refresh=False)

    def log_artifacts(self, directory: str | Path, name: str = "final") -> None:
        """Upload `directory` (a final checkpoint) or a file (a report) under `name`, where the
        config asks for it (MLflow `log_artifacts`)."""
        if self.active:
            for backend in self._backends:
                backend.log_artifacts(Path(directory), name)

    def close(self) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        for backend in self._backends:
            backend.close()
        self._jsonl.close()


def read_run_info(output_dir: str | Path) -> dict[str, Any]:
    """The MLflow / W&B run ids a tracker wrote under `output_dir` (empty when none)."""
    path = Path(output_dir) / TRACKING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def attach_artifacts(output_dir: str | Path, directory: str | Path, tracking: TrackingConfig,
                     name: str = "final") -> None:
    """Upload `directory` into the MLflow run a (now finished) tracker opened under `output_dir`:
    how a Ray Train driver adds the final checkpoint its rank-0 worker's run did not have yet."""
    if tracking.mlflow.enabled and tracking.mlflow.log_artifacts:
        from chimed_ray.utils.tracking_backends import attach_mlflow_artifacts

        run_id = read_run_info(output_dir).get("mlflow", {}).get("run_id", "")
        attach_mlflow_artifacts(tracking.mlflow, run_id, Path(directory), name)


_SHOWN = {"train/loss", "train/tokens_per_s", "eval/loss", "train/accuracy", "reward/mean", "train/lr"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file (an absent file gives an empty list). A line torn by a
    kill mid-write is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                records.append(record)
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the records up to `last_step` (the checkpoint a run resumes from), atomically."""
    from chimed_ray.utils.files import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def plot_curves(metrics_path: str | Path, png_path: str | Path, keys: tuple[str, ...] = ("train/loss", "eval/loss"), title: str = "") -> Path | None:
    """Plot the named metrics against step into a PNG; returns its path, or None if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    series = {key: [(r["step"], r[key]) for r in records if key in r] for key in keys}
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for key, points in series.items():
        steps, values = zip(*sorted(points))
        axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
    axis.set_xlabel("optimizer step")
    axis.set_title(title or Path(metrics_path).parent.name)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path)
    plt.close(figure)
    return png_path
