"""Batch sampling and scoring with Ray Data (rejection sampling).

Each `AnswerSampler` actor loads the checkpoint once and answers batches of prompt rows with the
HF engine; each `AnswerScorer` actor scores answers with the reward model (a rule function runs
in plain tasks). Ray Data streams rows between the stages, so generation and scoring overlap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimed_ray.rollout.base import SamplingParams

if TYPE_CHECKING:
    import pandas as pd


def _rows(batch: "pd.DataFrame", key: str) -> list[list[int]]:
    return [[int(token) for token in row] for row in batch[key]]


class AnswerSampler:
    """Ray Data callable class: adds `answer_ids` to rows holding `prompt_ids`."""

    def __init__(self, checkpoint: str, params: SamplingParams, use_gpu: bool = False) -> None:
        from chimed_ray.distributed.policy import eos_token_ids
        from chimed_ray.models import load_tokenizer
        from chimed_ray.rollout.hf_engine import HFEngine

        tokenizer = load_tokenizer(checkpoint)
        device = "cuda" if use_gpu else "cpu"
        precision = "bf16" if use_gpu else "fp32"
        self.engine = HFEngine.from_path(checkpoint, eos_token_ids(tokenizer), tokenizer.pad_token_id, precision, device)
        self.params = params

    def __call__(self, batch: "pd.DataFrame") -> "pd.DataFrame":
        # Seed from the rows themselves, so a rerun samples the same answers whatever the batching.
        seed = None if self.params.seed is None else self.params.seed + int(batch["row_id"].iloc[0])
        params = SamplingParams(**{**self.params.__dict__, "seed": seed})
        return batch.assign(answer_ids=self.engine.generate(_rows(batch, "prompt_ids"), params))


class AnswerScorer:
    """Ray Data callable class: adds `answer_text` and the reward model's `score` to each row."""

    def __init__(self, reward_path: str, use_gpu: bool = False) -> None:
        from chimed_ray.config import TinyModelConfig
        from chimed_ray.models import load_tokenizer
        from chimed_ray.models.heads import build_scalar_model

        self.tokenizer = load_tokenizer(reward_path)
        self.device = "cuda" if use_gpu else "cpu"
        self.model = build_scalar_model(reward_path, TinyModelConfig(), self.tokenizer).to(self.device).eval()

    def __call__(self, batch: "pd.DataFrame") -> "pd.DataFrame":
        import torch

        from chimed_ray.models.heads import sequence_scores
        from chimed_ray.data.padding import right_pad

        prompts, answers = _rows(batch, "prompt_ids"), _rows(batch, "answer_ids")
        input_ids, attention_mask = right_pad([p + a for p, a in zip(prompts, answers)], self.tokenizer.pad_token_id)
        with torch.no_grad():
            scores = sequence_scores(self.model, input_ids.to(self.device), attention_mask.to(self.device))
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in answers]
        return batch.assign(answer_text=texts, score=scores.cpu().tolist())


def score_with_function(batch: "pd.DataFrame", function: str, tokenizer_path: str) -> "pd.DataFrame":
    """Ray Data task: adds `answer_text` and a rule function's `score` (no model, so no actor)."""
    from chimed_ray.distributed.frozen import load_function
    from chimed_ray.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    prompts, answers = _rows(batch, "prompt_ids"), _rows(batch, "answer_ids")
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in answers]
    scores = load_function(function)([tokenizer.decode(ids) for ids in prompts], texts, answers)
    return batch.assign(answer_text=texts, score=[float(score) for score in scores])


def sample_and_score(
    rows: list[dict[str, Any]], checkpoint: str, params: SamplingParams, reward_path: str, function: str,
    num_actors: int, cpus_per_actor: float, gpus_per_actor: float, batch_size: int,
) -> list[dict[str, Any]]:
    """Sample then score `rows` (`row_id`, `prompt_index`, `prompt_ids`): a sampling actor pool,
    then a reward-model actor pool (or plain tasks for a rule function). Returns the rows with
    `answer_ids`, `answer_text` and `score`, in `row_id` order."""
    import ray.data

    use_gpu = gpus_per_actor > 0
    resources = {"num_cpus": cpus_per_actor, **({"num_gpus": gpus_per_actor} if use_gpu else {})}
    dataset = ray.data.from_items(rows).map_batches(
        AnswerSampler, fn_constructor_kwargs={"checkpoint": checkpoint, "params": params, "use_gpu": use_gpu},
        batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=num_actors), **resources,
    )
    if function:
        dataset = dataset.map_batches(score_with_function, fn_kwargs={"function": function, "tokenizer_path": checkpoint},
                                      batch_size=batch_size, batch_format="pandas", num_cpus=cpus_per_actor)
    else:
        dataset = dataset.map_batches(AnswerScorer, fn_constructor_kwargs={"reward_path": reward_path, "use_gpu": use_gpu},
                                      batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=num_actors), **resources)
    return sorted(dataset.take_all(), key=lambda row: row["row_id"])
