"""`chimed-ray eval --config configs/eval/tiny.yaml [key=value ...]`: ChiMed-GPT's evaluation.

1. Read every task's records once (bundled sets unless configured) and build their requests.
2. For each checkpoint, answer all requests of all tasks in one pass, on the path
   `distributed.plan_for` picks: in this process, or on a Ray Data actor pool (`scale.num_actors`:
   auto, 0 or the pool size). An OpenAI-compatible endpoint answers the generation tasks.
3. Score each task (accuracy, entity F1, BLEU/ROUGE, bias-scale totals) and write
   `report.json`, `report.md`, the PNG charts and per-item predictions under `output_dir`.
"""

from __future__ import annotations

import datetime
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from chimed_ray.config.eval import CheckpointConfig, EvalConfig, EvalScaleConfig
from chimed_ray.config.loader import to_dict
from chimed_ray.evaluation.records import EvalRequest, EvalResponse
from chimed_ray.evaluation.tasks import Task, TaskOptions, load_task
from chimed_ray.utils.files import InputError

if TYPE_CHECKING:
    from chimed_ray.evaluation.distributed import EvalPlan

Answerer = Callable[[list[EvalRequest]], list[EvalResponse]]


def evaluate_model(name: str, tasks: list[Task], answer: Answerer, output_dir: Path) -> dict[str, Any]:
    """Answer the requests of `tasks` with `answer`, score them, and write per-item predictions."""
    from chimed_ray.evaluation.report import write_predictions

    requests = [request for task in tasks for request in task.requests()]
    start = time.perf_counter()
    responses = {response.uid: response for response in answer(requests)}
    seconds = time.perf_counter() - start
    results = {}
    for task in tasks:
        result = task.score(responses)
        write_predictions(output_dir, name, task.name, result.predictions)
        results[task.name] = {"metrics": result.metrics, "breakdown": result.breakdown}
    return {
        "requests": len(requests),
        "seconds": round(seconds, 3),
        "items_per_second": round(len(requests) / seconds, 3) if seconds > 0 else None,
        "tasks": results,
        "skipped": {},
    }


def resolve_checkpoint(checkpoint: CheckpointConfig, output_dir: Path, seed: int) -> Path:
    """The checkpoint's directory; an empty path saves a freshly initialised tiny model once."""
    from chimed_ray.models import is_hf_checkpoint

    if checkpoint.path:
        # Checked here, before any actor starts, so a typo fails with one line, not an actor crash.
        if not is_hf_checkpoint(checkpoint.path):
            raise InputError(
                f"{checkpoint.path}: checkpoint {checkpoint.name!r} is not an HF model directory "
                "(config.json and *.safetensors)"
            )
        return Path(checkpoint.path)
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    target = output_dir / "models" / checkpoint.name
    if not is_hf_checkpoint(target):
        tokenizer = load_tokenizer("")
        save_hf_checkpoint(build_causal_lm("", TinyModelConfig(), tokenizer, seed=seed), tokenizer, target)
    return target


def choose_plan(scale: EvalScaleConfig) -> "EvalPlan":
    """Decide the path once per run; joins (or starts) Ray only when the plan may need it."""
    from chimed_ray.evaluation import distributed

    if scale.num_actors == 0:
        return distributed.plan_for(scale, None)
    if scale.num_actors == "auto" and not _ray_reachable():
        local = distributed.local_shape()
        if not local.gpus:  # one machine, no GPUs: the loop, without starting Ray at all
            return distributed.plan_for(scale, local)
    _start_ray()
    plan = distributed.plan_for(scale, distributed.ray_cluster_shape())
    if plan.num_actors:
        distributed.check_actor_resources(plan.num_actors, plan.cpus_per_actor, plan.gpus_per_actor)
    return plan


def checkpoint_answerer(config: EvalConfig, plan: "EvalPlan", path: Path, name: str) -> Answerer:
    """Answering for one checkpoint on the path `plan` says (loop or Ray Data pool)."""
    from chimed_ray.evaluation import distributed

    common = {
        "model_path": str(path), "precision": plan.precision,
        "max_prompt_length": config.generation.max_prompt_length, "batch_size": config.scale.batch_size,
        "progress_bar": config.scale.progress_bar, "description": name,
    }
    if not plan.num_actors:
        return partial(distributed.run_local, **common)

    def answer(requests: list[EvalRequest]) -> list[EvalResponse]:
        return distributed.run_on_ray(requests, num_actors=plan.num_actors, cpus_per_actor=plan.cpus_per_actor,
                                      gpus_per_actor=plan.gpus_per_actor, **common).responses

    return answer


def endpoint_answerer(config: EvalConfig) -> Answerer:
    """Concurrent chat completions from the configured OpenAI-compatible endpoint."""
    from chimed_ray.evaluation.distributed import progress
    from chimed_ray.evaluation.scoring import OpenAIBackend

    endpoint = config.endpoint
    api_key = endpoint.api_key or os.environ.get(endpoint.api_key_env, "")
    backend = OpenAIBackend(endpoint.base_url, endpoint.model, api_key, endpoint.max_concurrency, endpoint.timeout)

    def answer(requests: list[EvalRequest]) -> list[EvalResponse]:
        with progress(len(requests), endpoint.name, config.scale.progress_bar) as bar:
            return backend.run(requests, on_done=bar.update)

    return answer


def _ray_reachable() -> bool:
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


def _start_ray() -> None:
    import ray

    from chimed_ray.cluster.address import check_ray_address

    if not ray.is_initialized():
        check_ray_address()  # a dead recorded cluster: one line in seconds, not a hang
        ray.init(address=os.environ.get("RAY_ADDRESS"))  # the job's cluster, else a local one


def public_config(config: EvalConfig) -> dict[str, Any]:
    """The config as written into the report: the API key never leaves the process."""
    data = to_dict(config)
    if data["endpoint"]["api_key"]:
        data["endpoint"]["api_key"] = "***"
    return data


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every configured model on every configured task; returns the report (also written)."""
    from chimed_ray.evaluation.report import write_report

    output_dir = Path(config.output_dir)
    options = TaskOptions(config.files, config.few_shot, config.few_shot_files, config.scales_file,
                          config.max_items, config.generation.max_new_tokens, config.reward_model)
    tasks = [load_task(name, options) for name in config.tasks]
    paths = {c.name: resolve_checkpoint(c, output_dir, config.seed) for c in config.checkpoints}
    plan = choose_plan(config.scale) if config.checkpoints else None
    models: dict[str, Any] = {}
    for checkpoint in config.checkpoints:
        path = paths[checkpoint.name]
        models[checkpoint.name] = {"backend": "hf", "source": str(path), "path": plan.describe(), **evaluate_model(
            checkpoint.name, tasks, checkpoint_answerer(config, plan, path, checkpoint.name), output_dir)}
    if config.endpoint.enabled:
        runnable = [task for task in tasks if not task.needs_logprobs]
        result = evaluate_model(config.endpoint.name, runnable, endpoint_answerer(config), output_dir)
        result["skipped"] = {task.name: "needs next-token log-probabilities" for task in tasks if task.needs_logprobs}
        models[config.endpoint.name] = {"backend": "openai", "source": config.endpoint.base_url, **result}
    report = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": public_config(config),
        "models": models,
    }
    report["files"] = {key: str(path) for key, path in write_report(report, output_dir, config.plots).items()}
    log_scores(config, models, [Path(path) for path in report["files"].values()])
    return report


def log_scores(config: EvalConfig, models: dict[str, Any], report_files: list[Path]) -> None:
    """Every model's numeric scores as `<model>/<task>/<metric>` at step 0, through the tracker
    (`metrics.jsonl`, and MLflow / W&B when configured); the report files as MLflow artifacts."""
    from chimed_ray.utils.tracking import RunTracker

    tracker = RunTracker(config.output_dir, 0, tensorboard=False, progress_bar=False, description="eval",
                         tracking=config.logging, run_config=public_config(config))
    for name, model in models.items():
        scores = {f"{name}/{task}/{metric}": value for task, result in model["tasks"].items()
                  for metric, value in result["metrics"].items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)}
        tracker.log(0, {**scores, f"{name}/items_per_second": model["items_per_second"] or 0.0})
    for path in report_files:
        tracker.log_artifacts(path, "report")
    tracker.close()


def main(argv: Sequence[str]) -> int:
    """`chimed-ray eval` entry point: parse and validate the config, run, print where the report is."""
    from chimed_ray.config.arguments import parse_stage_config
    from chimed_ray.evaluation.report import summary_table

    config, _ = parse_stage_config("eval", EvalConfig, argv)
    report = run_evaluation(config)
    print("\n".join(summary_table(report["models"])))
    for key, path in report["files"].items():
        print(f"{key}: {path}")
    return 0
