"""Run tracking on rank 0: progress bar, TensorBoard, a JSONL metrics log and a PNG loss curve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunTracker:
    """Writes every logged step to `<output_dir>/metrics.jsonl` and TensorBoard, and shows a
    tqdm bar with the latest loss and tokens/s. Inactive (a no-op) on ranks other than 0."""

    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        active: bool = True,
        tensorboard: bool = True,
        progress_bar: bool = True,
        description: str = "train",
    ) -> None:
        self.active = active
        self.output_dir = Path(output_dir)
        self._writer = None
        self._bar = None
        if not active:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run logs again every step after its checkpoint: drop the earlier copies.
        truncate_metrics(self.output_dir / "metrics.jsonl", initial_step)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=description, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` for `step` and move the progress bar to `step`."""
        if not self.active:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items() if k in _SHOWN}
            if shown:
                self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()


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
