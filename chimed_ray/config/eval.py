"""Config of the `eval` stage: which models, which benchmarks, how many Ray actors.

Models are local HF checkpoints (`checkpoints`, each a name and a path; an empty path means a
freshly initialised tiny model, handy for smoke tests) and/or one OpenAI-compatible endpoint.
Tasks read their bundled files unless `files.<task>` lists others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chimed_ray.config.common import TrackingConfig
from chimed_ray.config.loader import check

EVAL_TASKS = ("mcq", "medqa", "ner", "qa", "dialogue", "cami", "mica", "reward")
DEFAULT_TASKS = EVAL_TASKS[:-1]  # `reward` also needs `reward_model`


@dataclass
class CheckpointConfig:
    """One local model to evaluate. `path` is an HF checkpoint directory with its tokenizer."""

    name: str = ""
    path: str = ""

    def validate(self) -> None:
        check(bool(self.name), "name", "every checkpoint needs a name (used in the report)")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint (our Ray Serve app, vLLM, OpenAI...); generation tasks only.

    The key is read from `api_key`, else from the environment variable named by `api_key_env`; it
    is never written to the report.
    """

    name: str = "endpoint"
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout: float = 120.0

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def validate(self) -> None:
        if self.enabled:
            check(
                self.base_url.startswith(("http://", "https://")),
                "base_url",
                f"expected an http(s) URL, got {self.base_url!r}",
            )
            check(bool(self.model), "model", "the endpoint needs a model name")
        check(self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        check(self.timeout > 0, "timeout", "must be positive")


@dataclass
class GenerationConfig:
    """Greedy decoding limits, shared by NER, QA and dialogue."""

    max_new_tokens: int = 256
    max_prompt_length: int = 2048

    def validate(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.max_prompt_length >= 16, "max_prompt_length", f"must be >= 16, got {self.max_prompt_length}")


@dataclass
class EvalScaleConfig:
    """How requests are run.

    `num_actors: auto` (default) picks the fastest path for the cluster: a single-process loop on
    one node without GPUs, a Ray Data actor pool when the cluster has several nodes (one actor per
    `cpus_per_actor` CPUs) or GPUs (one per `gpus_per_actor` GPUs, 1 when left at 0). `0` forces the
    loop, `N >= 1` a pool of N actors. `auto` joins the cluster named by RAY_ADDRESS (as under
    `ray job submit`), and on a machine without one starts Ray only when it has GPUs.
    """

    num_actors: int | Literal["auto"] = "auto"
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_size: int = 8
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    progress_bar: bool = True

    def validate(self) -> None:
        check(
            self.num_actors == "auto" or self.num_actors >= 0,
            "num_actors",
            f"expected auto, 0 (single-process loop) or the size of the actor pool, got {self.num_actors}",
        )
        check(self.gpus_per_actor >= 0, "gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        check(self.cpus_per_actor > 0, "cpus_per_actor", f"must be positive, got {self.cpus_per_actor}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.gpus_per_actor == 0 or self.num_actors != 0,
            "gpus_per_actor",
            "GPUs are only used by Ray actors; set num_actors to auto or >= 1",
        )
        check(
            self.num_actors == "auto" or self.gpus_per_actor > 0 or self.precision in ("auto", "fp32"),
            "precision",
            f"{self.precision} needs gpus_per_actor > 0; CPU evaluation runs in fp32",
        )


@dataclass
class EvalConfig:
    """The `eval` stage: ChiMed-GPT's benchmarks (MCQ, NER, QA, dialogue) and bias scales.

    `files` maps a task to its input files (C-Eval/CMMLU CSV or JSONL, MedQA JSONL, CCKS-2019
    JSONL, ...); a task missing from it uses the bundled set. `few_shot_files` gives the MCQ
    demonstrations (bundled `mcq_dev.jsonl` when empty). `max_items` caps every task with an evenly
    spaced sample (0: all items). `logging.mlflow` / `logging.wandb` receive every model's scores.
    """

    output_dir: str = "outputs/eval"
    checkpoints: list[CheckpointConfig] = field(default_factory=list)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    reward_model: str = ""  # the `reward` task's scorer: an HF reward-model checkpoint
    files: dict[str, list[str]] = field(default_factory=dict)
    few_shot: int = 0
    few_shot_files: list[str] = field(default_factory=list)
    scales_file: str = ""
    max_items: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scale: EvalScaleConfig = field(default_factory=EvalScaleConfig)
    logging: TrackingConfig = field(default_factory=TrackingConfig)
    plots: bool = True
    seed: int = 0

    def validate(self) -> None:
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(
            bool(self.checkpoints) or self.endpoint.enabled,
            "checkpoints",
            "give at least one checkpoint or an endpoint.base_url",
        )
        names = [c.name for c in self.checkpoints] + ([self.endpoint.name] if self.endpoint.enabled else [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        check(not duplicates, "checkpoints", f"model names must be unique, {duplicates} repeats")
        check(bool(self.tasks), "tasks", f"choose at least one of {list(EVAL_TASKS)}")
        for index, task in enumerate(self.tasks):
            check(task in EVAL_TASKS, f"tasks[{index}]", f"expected one of {list(EVAL_TASKS)}, got {task!r}")
        check("reward" not in self.tasks or bool(self.reward_model), "reward_model",
              "the reward task needs a reward-model checkpoint directory")
        for task in self.files:
            check(task in EVAL_TASKS, f"files.{task}", f"unknown task, expected one of {list(EVAL_TASKS)}")
        check(0 <= self.few_shot <= 10, "few_shot", f"must be in [0, 10], got {self.few_shot}")
        check(self.max_items >= 0, "max_items", "must be >= 0 (0 means all)")
