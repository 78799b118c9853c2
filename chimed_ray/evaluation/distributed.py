"""Running requests for one checkpoint: in this process, or on a Ray Data pool of model actors.

`plan_for` picks the path from the config and the cluster's shape (pure, no Ray): with
`scale.num_actors: auto`, one node without GPUs gets the single-process loop (on one machine it
already uses every core, and a pool would only add process start-up and model copies), while a
cluster of several nodes, or one with GPUs, gets an actor pool sized to it.

The pool is `map_batches(ScorerActor, compute=ActorPoolStrategy(size=num_actors))`: `ScorerActor`
is a callable class, so each actor loads the checkpoint once in `__init__` and answers tasks until
the dataset is drained (one load per actor per checkpoint, counted in `PoolRun.model_loads`).
Tasks hold a few model batches each, generation first, so per-task overhead stays small and the
last tasks to finish are the cheap option-scoring ones. Both paths end in `HFScorer.run`, so a
batch is answered the same way wherever it runs.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

from chimed_ray.config.common import check_resources
from chimed_ray.config.eval import EvalScaleConfig
from chimed_ray.config.loader import ConfigError
from chimed_ray.evaluation.records import EvalRequest, EvalResponse

BATCHES_PER_TASK = 2  # model batches per Ray Data task: amortises dispatch, keeps the tail short


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr (items/s shown), or a no-op stand-in when disabled."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="item", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


@dataclass(frozen=True)
class ClusterShape:
    """What the decision needs to know about the machines."""

    nodes: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class EvalPlan:
    """Where one checkpoint's requests run: `num_actors == 0` is the single-process loop."""

    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    precision: str
    reason: str

    def describe(self) -> str:
        if not self.num_actors:
            return f"single-process loop ({self.reason})"
        gpus = f", {self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else ""
        return f"Ray Data pool of {self.num_actors} actors{gpus} ({self.reason})"


def plan_for(scale: EvalScaleConfig, shape: ClusterShape | None) -> EvalPlan:
    """The path for `scale` on a cluster of `shape` (None: not looked at, for a forced size).

    Raises:
        ConfigError: half precision asked for without GPUs, or a cluster too small for one actor.
    """
    if scale.num_actors == "auto":
        if shape is None:
            raise ValueError("scale.num_actors=auto needs the cluster's shape")
        if shape.gpus > 0:
            gpus_each = scale.gpus_per_actor or 1.0
            actors, reason = int(shape.gpus // gpus_each), f"auto: {shape.gpus:g} GPUs"
        elif shape.nodes > 1:
            gpus_each, actors = 0.0, int(shape.cpus // scale.cpus_per_actor)
            reason = f"auto: {shape.nodes} nodes, {shape.cpus:g} CPUs"
        else:
            gpus_each, actors, reason = 0.0, 0, "auto: one node without GPUs"
        if shape.gpus > 0 or shape.nodes > 1:
            if actors < 1:
                raise ConfigError(f"scale.num_actors: auto found no room for one actor of "
                                  f"{scale.cpus_per_actor:g} CPUs / {gpus_each:g} GPUs on this cluster")
    else:
        actors, gpus_each = scale.num_actors, scale.gpus_per_actor
        reason = "scale.num_actors=0" if not actors else f"scale.num_actors={actors}"
    precision = scale.precision if scale.precision != "auto" else ("bf16" if gpus_each > 0 else "fp32")
    if precision in ("bf16", "fp16") and gpus_each == 0:
        raise ConfigError(f"scale.precision: {precision} needs GPU actors, and this run has none "
                          "(CPU evaluation runs in fp32)")
    return EvalPlan(actors, scale.cpus_per_actor if actors else 0.0, gpus_each if actors else 0.0, precision, reason)


def ray_cluster_shape() -> ClusterShape:
    """Alive nodes, CPUs and GPUs of the Ray cluster this process is connected to."""
    import ray

    total = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterShape(nodes, float(total.get("CPU", 0)), float(total.get("GPU", 0)))


def local_shape() -> ClusterShape:
    """This machine alone, for `auto` when there is no Ray cluster to join."""
    import torch

    return ClusterShape(1, float(os.cpu_count() or 1), float(torch.cuda.device_count()))


def check_actor_resources(num_actors: int, cpus_per_actor: float, gpus_per_actor: float) -> None:
    """Fail before any actor starts if the Ray cluster cannot hold the actor pool."""
    check_resources("scale.num_actors", num_actors, "actors", cpus_per_actor, gpus_per_actor)


def sort_for_batching(requests: list[EvalRequest]) -> list[EvalRequest]:
    """Generation first (the costly tasks start early), then option scoring; shortest first within a
    kind, so batches pad little."""
    return sorted(requests, key=lambda r: (r.kind != "generate", sum(len(m["content"]) for m in r.messages)))


def run_local(requests: list[EvalRequest], model_path: str, precision: str, max_prompt_length: int,
              batch_size: int, progress_bar: bool = True, description: str = "eval") -> list[EvalResponse]:
    """Answer `requests` with one model in this process (no Ray)."""
    from chimed_ray.evaluation.scoring import HFScorer

    scorer = HFScorer(model_path, precision, max_prompt_length)
    with progress(len(requests), description, progress_bar) as bar:
        return scorer.run(requests, batch_size, on_done=bar.update)


class ScorerActor:
    """Ray Data callable class: one `HFScorer` per actor, loaded once, called on task rows."""

    def __init__(self, model_path: str, precision: str, max_prompt_length: int, batch_size: int,
                 threads: int) -> None:
        import uuid

        import torch

        from chimed_ray.evaluation.scoring import HFScorer

        # The actor's CPU share, not the machine's core count: actors on one node must not
        # oversubscribe the cores each other use.
        torch.set_num_threads(threads)
        self.scorer = HFScorer(model_path, precision, max_prompt_length)
        self.batch_size = batch_size
        self.load_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per model load

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        columns = list(batch)
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        responses = self.scorer.run([EvalRequest.from_row(row) for row in rows], self.batch_size)
        out = [response.to_row() for response in responses]
        answered = {key: [row[key] for row in out] for key in ("uid", "text", "option_logprobs")}
        return {**answered, "loaded_by": [self.load_id] * len(out)}


@dataclass
class PoolRun:
    """The pool's answers, and how many times a model was loaded to give them."""

    responses: list[EvalResponse]
    model_loads: int  # distinct ScorerActor.__init__ calls that answered tasks
    tasks: int  # Ray Data tasks (blocks) the requests were split into


def rows_per_task(num_requests: int, batch_size: int, num_actors: int) -> int:
    """Task size: a few model batches, fewer when that would leave an actor without work."""
    per_actor = math.ceil(num_requests / max(num_actors, 1))
    return max(1, min(batch_size * BATCHES_PER_TASK, per_actor))


def run_on_ray(requests: list[EvalRequest], model_path: str, precision: str, max_prompt_length: int,
               batch_size: int, num_actors: int, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
               progress_bar: bool = True, description: str = "eval") -> PoolRun:
    """Answer `requests` on a pool of `num_actors` model actors with Ray Data `map_batches`.

    Needs `ray.init()` (or `ray job submit`) first. The checkpoint directory must be readable by
    every node (shared filesystem), since each actor loads it itself.
    """
    import ray

    if not requests:
        return PoolRun([], 0, 0)
    rows = [r.to_row() for r in sort_for_batching(requests)]
    task_rows = rows_per_task(len(rows), batch_size, num_actors)
    tasks = math.ceil(len(rows) / task_rows)
    context = ray.data.DataContext.get_current()
    shown, context.enable_progress_bars = context.enable_progress_bars, False  # ours counts items
    try:
        answered = ray.data.from_items(rows, override_num_blocks=tasks).map_batches(
            ScorerActor,
            fn_constructor_kwargs={
                "model_path": str(model_path), "precision": precision, "max_prompt_length": max_prompt_length,
                "batch_size": batch_size, "threads": max(1, int(cpus_per_actor)),
            },
            batch_size=task_rows,
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        responses, loads = [], set()
        with progress(len(rows), description, progress_bar) as bar:
            for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
                for uid, text, logprobs in zip(batch["uid"], batch["text"], batch["option_logprobs"]):
                    responses.append(EvalResponse.from_row({"uid": uid, "text": text, "option_logprobs": logprobs}))
                loads.update(batch["loaded_by"].tolist())
                bar.update(len(batch["uid"]))
    finally:
        context.enable_progress_bars = shown
    return PoolRun(responses, len(loads), tasks)
