"""The one interface every generation engine implements, and the sampling parameters it takes.

An engine turns prompt token ids into answer token ids and can receive new weights. PPO calls
`generate` (or `generate_with_logprobs`, for one-step off-policy training) once per step and,
when the engine does not share the policy's parameters, pushes the updated weights after every
optimizer update: bucket by bucket over a process group (`open_weight_sync`/`receive_weights`,
see `distributed/weight_sync.py`), or as one state dict (`load_weights`, the fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:
    import torch

    from chimed_ray.distributed.weight_sync import Bucket, SyncStats


@dataclass
class SamplingParams:
    """How to sample one answer per prompt. `greedy` overrides temperature/top-p/top-k."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: Optional[int] = None


@dataclass
class Generation:
    """Answers and, per answer token, its log-prob under the weights that sampled it."""

    answers: list[list[int]]  # [B][len_i] generated ids, EOS kept
    logprobs: list[list[float]]  # [B][len_i] behaviour log-probs (temperature applied)


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for one stream (a rank, a request) that never equals another stream's: mixed by
    numpy's SeedSequence, where `seed + key` would collide (seed 1 + rank 0 = seed 0 + rank 1)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class GenerationEngine(Protocol):
    """What the PPO driver and rejection sampling need from an engine."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """One answer per prompt: generated ids only, ending with EOS when the model stopped."""

    def generate_with_logprobs(self, prompts: list[list[int]], params: SamplingParams) -> Generation:
        """Answers plus each answer token's log-prob under the engine's current weights."""

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> None:
        """Replace the engine's weights with `state_dict` (the policy's HF parameter names)."""

    def open_weight_sync(self, address: tuple[str, int], rank: int, world_size: int, backend: str) -> None:
        """Join the weight-sync process group hosted by policy rank 0 at `address`."""

    def receive_weights(self, buckets: list["Bucket"]) -> "SyncStats":
        """Receive and load the broadcast buckets; returns bytes received and peak extra memory."""


def trim_at_eos(ids: list[int], eos_ids: set[int], pad_id: Optional[int]) -> list[int]:
    """Cut an answer after its first EOS (kept) or before trailing padding."""
    for index, token in enumerate(ids):
        if token in eos_ids:
            return ids[: index + 1]
        if pad_id is not None and token == pad_id:
            return ids[:index]
    return ids


def build_engine(kind: str, **kwargs) -> GenerationEngine:
    """Create an engine by name: `hf` (HF generate) or `vllm` (imported only when asked for)."""
    if kind == "hf":
        from chimed_ray.rollout.hf_engine import HFEngine

        return HFEngine.from_path(**kwargs)
    if kind == "vllm":
        from chimed_ray.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    raise ValueError(f"unknown generation engine {kind!r}; expected 'hf' or 'vllm'")
