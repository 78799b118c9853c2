"""Packed log-prob forwards: every row of a `RolloutBatch` laid end to end in one row of real
tokens, no padding, for the score and train forwards of the policy and the reference.

A padded batch spends compute on every pad column of its left-padded prompts and right-padded
answers. Packed, the rows' tokens sit end to end and their position ids restart at 0 at each
row's first token; transformers reads the restarts as sequence boundaries (with no 2D attention
mask and no cache, `masking_utils.find_packed_sequence_indices`): under sdpa and eager it builds
a block-diagonal causal mask, under flash_attention_2 it calls the varlen kernel with the
boundaries as `cu_seqlens`. Only the positions that predict answer tokens reach the LM head
(`logits_to_keep` as an index tensor). Results come back as `[B, R]` like the padded forward's.

Packing is used only for model families whose transformers code builds its mask that way
(`PACKABLE`); anything else (e.g. a `trust_remote_code` model) keeps the padded forward, which
is always correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from chimed_ray.algorithms import entropy_from_logits, logprobs_from_logits
from chimed_ray.models.heads import position_ids_from_mask

if TYPE_CHECKING:
    from chimed_ray.distributed.batch import RolloutBatch

PACKABLE = {"llama", "qwen2", "qwen3", "mistral"}
PACKABLE_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3"}


@dataclass
class PackedRows:
    """A batch's real tokens in one row, and where each answer token's prediction comes from."""

    input_ids: Tensor  # [1, N] prompt and answer tokens of every row, end to end
    position_ids: Tensor  # [1, N] restarting at 0 at each row's first token
    predictors: Tensor  # [M] packed position whose logits predict each answer token
    targets: Tensor  # [M] the answer tokens
    rows: Tensor  # [M] row of each answer token in the batch
    columns: Tensor  # [M] its answer column


def can_pack(model: torch.nn.Module, batch: "RolloutBatch") -> bool:
    """True if `model`'s family builds packed masks from position ids and every answer has a prompt."""
    config = getattr(getattr(model, "module", model), "config", None)
    if config is None or getattr(config, "model_type", None) not in PACKABLE:
        return False
    if getattr(config, "_attn_implementation", "sdpa") not in PACKABLE_ATTENTION:
        return False
    prompt_lengths = batch.attention_mask[:, : batch.prompt_width].sum(dim=1)  # [B]
    return bool((prompt_lengths > 0).all())


def pack_rows(batch: "RolloutBatch") -> PackedRows:
    """Drop the padding of `batch` (left-padded prompts, right-padded answers) into one row."""
    mask = batch.attention_mask.bool()  # [B, P + R]
    lengths = mask.sum(dim=1)  # [B]
    starts = torch.cumsum(lengths, dim=0) - lengths  # [B] where each row begins in the packed row
    prompt_lengths = mask[:, : batch.prompt_width].sum(dim=1)  # [B]
    rows, columns = batch.response_mask.nonzero(as_tuple=True)  # [M] row-major, like the packed order
    return PackedRows(
        input_ids=batch.sequences[mask].unsqueeze(0),
        position_ids=position_ids_from_mask(batch.attention_mask)[mask].unsqueeze(0),
        predictors=starts[rows] + prompt_lengths[rows] + columns - 1,
        targets=batch.responses[rows, columns],
        rows=rows,
        columns=columns,
    )


def packed_response_logprobs(
    model: torch.nn.Module, batch: "RolloutBatch", temperature: float = 1.0, with_entropy: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """`response_logprobs` from one packed forward: `(logprobs [B, R], entropy [B, R] or None)`,
    float32, zero off the answer; gradients flow when enabled."""
    packed = pack_rows(batch)
    output = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=None,  # the restarting position ids are the mask
        logits_to_keep=packed.predictors,
        use_cache=False,
    )
    logits = output.logits[0] / temperature  # [M, V]
    shape = batch.response_mask.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    logprobs = logprobs.index_put((packed.rows, packed.columns), logprobs_from_logits(logits, packed.targets).float())
    entropy = None
    if with_entropy:
        entropy = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        entropy = entropy.index_put((packed.rows, packed.columns), entropy_from_logits(logits).float())
    return logprobs, entropy
