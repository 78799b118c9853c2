"""The typed batches that travel between the PPO driver and the actor groups.

Layout (as in OpenRLHF and verl): each row is a left-padded prompt of width P followed by a
right-padded answer of width R, so the answer tokens of every row sit in the same last R columns
and per-token tensors of the answer are simply `[B, R]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional, TypeVar

import torch
from torch import Tensor

BatchT = TypeVar("BatchT", bound="RolloutBatch")


@dataclass
class RolloutBatch:
    """Prompts and the answers sampled for them."""

    sequences: Tensor  # [B, P + R] prompt ids (left-padded) then answer ids (right-padded)
    attention_mask: Tensor  # [B, P + R] 1 on prompt and answer tokens, 0 on padding
    response_mask: Tensor  # [B, R] 1 on answer tokens up to and including EOS
    group_ids: Tensor  # [B] index of the prompt each answer responds to

    @property
    def size(self) -> int:
        return self.sequences.shape[0]

    @property
    def prompt_width(self) -> int:
        return self.sequences.shape[1] - self.response_mask.shape[1]

    @property
    def responses(self) -> Tensor:  # [B, R]
        return self.sequences[:, self.prompt_width :]

    def select(self: BatchT, index: Tensor | slice) -> BatchT:
        """The rows at `index`, every per-row tensor field sliced alike."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = value[index] if isinstance(value, Tensor) else value
        return type(self)(**values)

    def to(self: BatchT, device: torch.device) -> BatchT:
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = value.to(device) if isinstance(value, Tensor) else value
        return type(self)(**values)

    def shard(self: BatchT, rank: int, world_size: int) -> BatchT:
        """Contiguous rows for `rank` of `world_size` (the batch size must divide evenly)."""
        if self.size % world_size:
            raise ValueError(f"a batch of {self.size} rows does not split evenly over {world_size} workers")
        per_rank = self.size // world_size
        return self.select(slice(rank * per_rank, (rank + 1) * per_rank))

    def micro_batches(self: BatchT, size: int) -> Iterator[BatchT]:
        for start in range(0, self.size, size):
            yield self.select(slice(start, start + size))


@dataclass
class Experience(RolloutBatch):
    """A scored rollout, ready for PPO updates."""

    old_logprobs: Optional[Tensor] = None  # [B, R] policy log-probs at sampling time
    advantages: Optional[Tensor] = None  # [B, R]
    returns: Optional[Tensor] = None  # [B, R] critic targets (None without a critic)
    old_values: Optional[Tensor] = None  # [B, R] critic values at sampling time (None without a critic)
    reference_logprobs: Optional[Tensor] = None  # [B, R] reference log-probs (only with KL in the loss)


def build_rollout_batch(
    prompts: list[list[int]], responses: list[list[int]], group_ids: list[int],
    pad_token_id: int, eos_token_ids: list[int],
) -> RolloutBatch:
    """Pad prompts left and answers right into one `RolloutBatch`.

    An empty answer (the engine stopped at once) gets one pad column so shapes stay valid; its
    response mask is all zeros and it contributes nothing to any loss.
    """
    from chimed_ray.algorithms import response_mask_from_eos
    from chimed_ray.data.padding import left_pad, right_pad

    prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)  # [B, P]
    # An all-empty batch still gets one (masked) answer column.
    response_ids, within_length = right_pad([ids or [pad_token_id] for ids in responses], pad_token_id)  # [B, R]
    within_length[[not ids for ids in responses]] = 0
    pad = None if pad_token_id in eos_token_ids else pad_token_id
    response_mask = response_mask_from_eos(response_ids, eos_token_ids, pad) * within_length  # [B, R]
    return RolloutBatch(
        sequences=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_mask=response_mask,
        group_ids=torch.tensor(group_ids, dtype=torch.long),
    )


def concat_rows(parts: list[Tensor]) -> Tensor:
    """Rejoin per-rank results (row shards, in rank order) into one tensor."""
    return torch.cat([part.cpu() for part in parts], dim=0)
