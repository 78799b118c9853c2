"""Evaluation outputs: `report.json`, a Markdown comparison of the models, PNG charts, predictions.

The report is a plain dict: `{"created", "config", "models": {name: {"backend", "source",
"requests", "seconds", "items_per_second", "tasks": {task: {"metrics", "breakdown"}},
"skipped": {task: reason}}}}`. `seconds` is the wall time of answering every request, model loading
included. Every score except the bias scales and the reward is in 0-100. Bias scales are shown per
subscale with the direction each one points (a pooled score only where all point one way); the
reward is the reward model's mean score of each model's answers to held-out prompts.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from chimed_ray.utils.files import atomic_write_json, atomic_write_text

# The numbers shown for each task in the summary table and the bar chart.
HEADLINES = {
    "mcq": ("accuracy",),
    "medqa": ("accuracy",),
    "ner": ("f1",),
    "qa": ("bleu1", "bleu2", "rougeL"),
    "dialogue": ("bleu1", "bleu2", "rougeL"),
    "reward": ("reward",),
    "cami": (),  # bias scales: per-subscale columns, see _headlines
    "mica": (),
}
BIAS_TASKS = ("cami", "mica")
METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3",
                "bleu4": "BLEU-4", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "mean": "mean",
                "total": "total", "reward": "reward"}
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _tasks_in(models: dict[str, Any]) -> list[str]:
    seen = {task for model in models.values() for task in model["tasks"]}
    return [task for task in HEADLINES if task in seen]


def _headlines(models: dict[str, Any], task: str) -> list[str]:
    """The metrics shown for `task`: fixed ones, or for a bias scale its pooled total when the
    scale reports one, else one column per subscale."""
    if task not in BIAS_TASKS:
        return list(HEADLINES[task])
    metrics = [m["tasks"][task]["metrics"] for m in models.values() if task in m["tasks"]]
    if metrics and all("total" in m for m in metrics):
        return ["total"]
    return list(dict.fromkeys(key for m in metrics for key in m if key.startswith("subscale/")))


def _label(task: str, metric: str) -> str:
    if task == metric:  # "reward", not "reward reward"
        return task
    return f"{task} {metric.split('/', 1)[1] if metric.startswith('subscale/') else METRIC_NAMES[metric]}"


def _directions(models: dict[str, Any]) -> list[str]:
    """One legend line per bias scale: the direction of each subscale shown in the summary."""
    lines = []
    for task in (t for t in _tasks_in(models) if t in BIAS_TASKS):
        subscales: dict[str, Any] = {}
        for model in models.values():
            subscales.update(model["tasks"].get(task, {}).get("breakdown", {}).get("subscales", {}))
        if not subscales:
            continue
        parts = [f"{key} ({value.get('name', key)}): {value.get('direction', 'direction not stated')}"
                 for key, value in subscales.items()]
        pooled = "total" in _headlines(models, task)
        note = "pooled total, every item oriented the same way" if pooled else "mean item score per subscale, no pooled score"
        lines.append(f"- {task.upper()} ({note}): " + "; ".join(parts))
    return lines + [""] if lines else []


def _metric(model: dict[str, Any], task: str, metric: str) -> Any:
    return model["tasks"].get(task, {}).get("metrics", {}).get(metric)


def _breakdown_table(models: dict[str, Any], task: str, section: str, value: str) -> list[str]:
    keys = list(dict.fromkeys(k for m in models.values() for k in m["tasks"].get(task, {}).get("breakdown", {})
                              .get(section, {})))
    rows = []
    for key in keys:
        cells = [models[name]["tasks"].get(task, {}).get("breakdown", {}).get(section, {}).get(key, {})
                 for name in models]
        label = next((c["name"] for c in cells if c.get("name")), key)
        direction = next((c["direction"] for c in cells if c.get("direction")), "")
        label = f"{label} ({direction})" if direction else label
        rows.append([label] + [cell.get(value) for cell in cells])
    return _table([section.replace("_", " ")] + list(models), rows) if rows else []


def summary_table(models: dict[str, Any]) -> list[str]:
    """Markdown lines of the headline table: a row per model, the headline metrics of every task."""
    columns = [(t, m) for t in _tasks_in(models) for m in _headlines(models, t)]
    header = ["model"] + [_label(t, m) for t, m in columns] + ["items/s"]
    rows = [[name] + [_metric(model, t, m) for t, m in columns] + [model.get("items_per_second")]
            for name, model in models.items()]
    return _table(header, rows)


def markdown_report(report: dict[str, Any]) -> str:
    """Markdown: the summary table, then per-task breakdowns with the models side by side."""
    models = report["models"]
    tasks = _tasks_in(models)
    lines = [f"# Evaluation report ({report.get('created', '')})", "",
             "Scores in %, except the reward (the reward model's mean score of answers to held-out prompts) "
             "and CAMI/MICA (item scores after reverse keying).", "", "## Summary", ""]
    lines += summary_table(models) + _directions(models)
    for task in tasks:
        if task in ("mcq", "medqa"):
            lines += [f"## {task}: accuracy by subject", ""] + _breakdown_table(models, task, "by_subject", "accuracy")
        elif task == "ner":
            lines += ["## ner: F1 by entity type", ""] + _breakdown_table(models, task, "by_type", "f1")
        elif task == "reward":
            continue
        elif task in ("qa", "dialogue"):
            names = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL")
            lines += [f"## {task}: generation metrics", ""]
            lines += _table(["model"] + [METRIC_NAMES[n] for n in names],
                            [[name] + [_metric(model, task, n) for n in names] for name, model in models.items()])
        else:
            lines += [f"## {task}: mean item score by subscale", ""]
            lines += _breakdown_table(models, task, "subscales", "mean")
    skipped = [(name, task, why) for name, model in models.items() for task, why in model.get("skipped", {}).items()]
    if skipped:
        lines += ["## Skipped", ""] + _table(["model", "task", "reason"], [list(row) for row in skipped])
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib import pyplot as plt

    installed = {font.name for font in font_manager.fontManager.ttflist}
    cjk = [name for name in CJK_FONTS if name in installed]
    if cjk:
        plt.rcParams["font.sans-serif"] = cjk + list(plt.rcParams["font.sans-serif"])
    return plt, bool(cjk)


def plot_task_scores(models: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: one group per task metric (0-100), one bar per model."""
    plt, _ = _pyplot()
    columns = [(t, m) for t in _tasks_in(models) if t not in BIAS_TASKS + ("reward",) for m in HEADLINES[t]]
    if not columns:
        return None
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) + 2), 4.5))
    for index, (name, model) in enumerate(models.items()):
        values = [_metric(model, t, m) for t, m in columns]
        xs = [c + index * width - 0.4 + width / 2 for c in range(len(columns))]
        bars = ax.bar(xs, [v if isinstance(v, (int, float)) else 0.0 for v in values], width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(columns)), [f"{t}\n{METRIC_NAMES[m]}" for t, m in columns])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("ChiMed benchmarks")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bias_profiles(models: dict[str, Any], path: Path) -> Path | None:
    """A column per scale: mean score per subscale (top) and every item's score (bottom), a line per model."""
    plt, has_cjk = _pyplot()
    scales = [t for t in _tasks_in(models) if t in BIAS_TASKS]
    if not scales:
        return None
    fig, axes = plt.subplots(2, len(scales), figsize=(6 * len(scales), 8), squeeze=False)
    for column, scale in enumerate(scales):
        top, bottom = axes[0][column], axes[1][column]
        points = 1
        for name, model in models.items():
            breakdown = model["tasks"].get(scale, {}).get("breakdown", {})
            if not breakdown:
                continue
            points = max(points, len(breakdown["answers"]))
            # Without a CJK font, Chinese subscale names would draw as empty boxes; keys are safer.
            subscales = breakdown["subscales"]
            labels = [v.get("name", k) if has_cjk else k for k, v in subscales.items()]
            top.plot(labels, [v["mean"] for v in subscales.values()], marker="o", label=name)
            bottom.plot(list(breakdown["items"]), list(breakdown["items"].values()), marker=".", label=name)
        top.set_title(f"{scale.upper()}: mean score by subscale (1-{points})")
        bottom.set_title(f"{scale.upper()}: score by item (reverse-keyed items flipped)")
        bottom.set_xlabel("item id")
        bottom.tick_params(axis="x", labelsize=7, labelrotation=90)
        top.tick_params(axis="x", labelrotation=20)
        top.margins(x=0.15)
        for ax in (top, bottom):
            # The whole answer range, so runs and scales read on the same ruler.
            ax.set_ylim(0.8, points + 0.2)
            ax.set_ylabel("item score")
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_predictions(output_dir: Path, model: str, task: str, rows: list[dict[str, Any]]) -> Path:
    """Per-item outputs as `predictions/<model>/<task>.jsonl`, for reading a model's mistakes."""
    path = Path(output_dir) / "predictions" / model / f"{task}.jsonl"
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def write_report(report: dict[str, Any], output_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write `report.json`, `report.md` and (with `plots`) the PNG charts; returns their paths."""
    output_dir = Path(output_dir)
    paths = {"json": output_dir / "report.json", "markdown": output_dir / "report.md"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["markdown"], markdown_report(report) + "\n")
    if plots:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing")
            for key, plot in (("task_scores", plot_task_scores), ("bias_profiles", plot_bias_profiles)):
                written = plot(report["models"], output_dir / f"{key}.png")
                if written is not None:
                    paths[key] = written
    return paths
