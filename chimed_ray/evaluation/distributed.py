"""Running requests for one checkpoint: in this process, or on a Ray Data pool of model actors.

The Ray path turns the requests into a dataset (one block per batch) and calls
`map_batches(ScorerActor, compute=ActorPoolStrategy(size=num_actors), num_gpus=...)`: each actor
loads the checkpoint once and answers batches until the dataset is drained. The driver only
streams results back and counts them on a progress bar. Both paths end in `HFScorer.run`, so a
batch is answered the same way wherever it runs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

from chimed_ray.config.common import check_resources
from chimed_ray.evaluation.records import EvalRequest, EvalResponse


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr (items/s shown), or a no-op stand-in when disabled."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="item", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def sort_for_batching(requests: list[EvalRequest]) -> list[EvalRequest]:
    """Group option requests and generation requests, shortest first, so batches pad little."""
    return sorted(requests, key=lambda r: (r.kind, sum(len(m["content"]) for m in r.messages)))


def run_local(requests: list[EvalRequest], model_path: str, precision: str, max_prompt_length: int,
              batch_size: int, progress_bar: bool = True, description: str = "eval") -> list[EvalResponse]:
    """Answer `requests` with one model in this process (no Ray)."""
    from chimed_ray.evaluation.scoring import HFScorer

    scorer = HFScorer(model_path, precision, max_prompt_length)
    with progress(len(requests), description, progress_bar) as bar:
        return scorer.run(requests, batch_size, on_done=bar.update)


class ScorerActor:
    """Ray Data callable class: one `HFScorer` per actor, called on batches of request rows."""

    def __init__(self, model_path: str, precision: str, max_prompt_length: int, batch_size: int) -> None:
        from chimed_ray.evaluation.scoring import HFScorer

        self.scorer = HFScorer(model_path, precision, max_prompt_length)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        columns = list(batch)
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        responses = self.scorer.run([EvalRequest.from_row(row) for row in rows], self.batch_size)
        out = [response.to_row() for response in responses]
        return {key: [row[key] for row in out] for key in ("uid", "text", "option_logprobs")}


def check_actor_resources(num_actors: int, cpus_per_actor: float, gpus_per_actor: float) -> None:
    """Fail before any actor starts if the Ray cluster cannot hold the actor pool."""
    check_resources("scale.num_actors", num_actors, "actors", cpus_per_actor, gpus_per_actor)


def run_on_ray(requests: list[EvalRequest], model_path: str, precision: str, max_prompt_length: int,
               batch_size: int, num_actors: int, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
               progress_bar: bool = True, description: str = "eval") -> list[EvalResponse]:
    """Answer `requests` on a pool of `num_actors` model actors with Ray Data `map_batches`.

    Needs `ray.init()` (or `ray job submit`) first. The checkpoint directory must be readable by
    every node (shared filesystem), since each actor loads it itself.
    """
    import ray

    if not requests:
        return []
    rows = [r.to_row() for r in sort_for_batching(requests)]
    dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
    answered = dataset.map_batches(
        ScorerActor,
        fn_constructor_kwargs={
            "model_path": str(model_path), "precision": precision,
            "max_prompt_length": max_prompt_length, "batch_size": batch_size,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    responses: list[EvalResponse] = []
    with progress(len(rows), description, progress_bar) as bar:
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            for uid, text, logprobs in zip(batch["uid"], batch["text"], batch["option_logprobs"]):
                responses.append(EvalResponse.from_row({"uid": uid, "text": text, "option_logprobs": logprobs}))
            bar.update(len(batch["uid"]))
    return responses
