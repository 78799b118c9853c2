"""The task registry: which files a task reads (bundled unless configured) and how it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from chimed_ray.evaluation.records import EvalRequest, EvalResponse, TaskResult

BUNDLED_FILES = {
    "mcq": "eval/mcq.jsonl",
    "medqa": "eval/medqa.jsonl",
    "ner": "eval/ner.jsonl",
    "qa": "eval/qa.jsonl",
    "dialogue": "eval/dialogue.jsonl",
    "cami": "eval/cami.jsonl",
    "mica": "eval/mica.jsonl",
    "reward": "preference/eval.jsonl",  # held-out prompts
}
BUNDLED_FEW_SHOT = "eval/mcq_dev.jsonl"
BUNDLED_SCALES = "eval/scales.json"


class Task(Protocol):
    """What the runner needs from a task: its requests, and scores for the responses."""

    name: str
    needs_logprobs: bool

    def requests(self) -> list[EvalRequest]: ...

    def score(self, responses: dict[str, EvalResponse]) -> TaskResult: ...


@dataclass
class TaskOptions:
    """Plain settings the task builders need (taken from `EvalConfig` by the runner)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    few_shot: int = 0
    few_shot_files: list[str] = field(default_factory=list)
    scales_file: str = ""
    max_items: int = 0
    max_new_tokens: int = 256
    reward_model: str = ""


def _paths(configured: list[str], bundled: str) -> list[Path]:
    from chimed_ray.data.embedded import embedded_path

    return [Path(p) for p in configured] if configured else [embedded_path(bundled)]


def load_task(name: str, options: TaskOptions) -> Task:
    """Build task `name` from its files (the bundled set when `options.files` has none for it)."""
    from chimed_ray.evaluation import bias, generation, mcq, ner, reward

    paths = _paths(options.files.get(name, []), BUNDLED_FILES[name])
    if name in ("mcq", "medqa"):
        examples = _paths(options.few_shot_files, BUNDLED_FEW_SHOT) if options.few_shot else []
        return mcq.load_task(name, paths, examples, options.few_shot, options.max_items)
    if name == "ner":
        return ner.load_task(paths, options.max_new_tokens, options.max_items)
    if name in ("qa", "dialogue"):
        return generation.load_task(name, paths, options.max_new_tokens, options.max_items)
    if name in ("cami", "mica"):
        scales = _paths([options.scales_file] if options.scales_file else [], BUNDLED_SCALES)[0]
        return bias.load_task(name, paths, scales, options.max_items)
    if name == "reward":
        return reward.load_task(paths, options.reward_model, options.max_new_tokens, options.max_items)
    raise KeyError(f"unknown evaluation task {name!r} (known: {sorted(BUNDLED_FILES)})")
