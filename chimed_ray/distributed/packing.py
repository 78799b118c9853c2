"""Packed log-prob forwards: every row of a `RolloutBatch` laid end to end in one row of real
tokens, no padding, for the score and train forwards of the policy and the reference.

A padded batch spends compute on every pad column of its left-padded prompts and right-padded
answers. Packed, the rows' tokens sit end to end in bins as wide as the longest row (first-fit,
longest first) and their position ids restart at 0 at each row's first token; transformers reads the restarts as sequence boundaries (with no 2D attention
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
from chimed_ray.data.tokenize import first_fit
from chimed_ray.models.heads import position_ids_from_mask

if TYPE_CHECKING:
    from chimed_ray.distributed.batch import RolloutBatch

PACKABLE = {"llama", "qwen2", "qwen3", "mistral"}
PACKABLE_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3"}


@dataclass
class PackedRows:
    """A batch's real tokens in bins of the padded width, and where each answer token's
    prediction comes from (`keep`, read row-major, lines up with `rows`, `columns`, `targets`)."""

    input_ids: Tensor  # [K, W] rows end to end in K <= B bins, pad at the end of a bin
    position_ids: Tensor  # [K, W] restarting at 0 at each row's first token (and at a bin's tail)
    keep: Tensor  # [K, W] bool: positions whose logits predict an answer token
    rows: Tensor  # [M] row of each answer token in the batch
    columns: Tensor  # [M] its answer column
    targets: Tensor  # [M] the answer tokens


def can_pack(model: torch.nn.Module, batch: "RolloutBatch") -> bool:
    """True if `model`'s family builds packed masks from position ids and every answer has a prompt."""
    config = getattr(getattr(model, "module", model), "config", None)
    if config is None or getattr(config, "model_type", None) not in PACKABLE:
        return False
    if getattr(config, "_attn_implementation", "sdpa") not in PACKABLE_ATTENTION:
        return False
    prompt_lengths = batch.attention_mask[:, : batch.prompt_width].sum(dim=1)  # [B]
    return bool((prompt_lengths > 0).all())


def pack_rows(batch: "RolloutBatch", pad_token_id: int = 0) -> PackedRows:
    """Drop the padding of `batch` (left-padded prompts, right-padded answers) into bins no wider
    than its longest row: never more tokens than the padded batch, and attention stays within a
    bin (a single packed row would make an explicit mask's attention quadratic in the whole batch)."""
    mask = batch.attention_mask.bool()  # [B, P + R]
    lengths = mask.sum(dim=1).tolist()
    prompt_lengths = mask[:, : batch.prompt_width].sum(dim=1).tolist()
    answer_lengths = batch.response_mask.sum(dim=1).tolist()
    bins = first_fit(lengths, max(lengths))
    shape = (len(bins), max(sum(lengths[row] for row in rows) for rows in bins))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids, keep = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.bool)
    rows, columns, targets = (torch.zeros(shape, dtype=torch.long) for _ in range(3))
    for k, members in enumerate(bins):
        offset = 0
        for row in members:
            length, answer = lengths[row], answer_lengths[row]
            input_ids[k, offset : offset + length] = batch.sequences[row][mask[row]]
            position_ids[k, offset : offset + length] = torch.arange(length)
            predictors = slice(offset + prompt_lengths[row] - 1, offset + prompt_lengths[row] - 1 + answer)
            keep[k, predictors], rows[k, predictors] = True, row
            columns[k, predictors] = torch.arange(answer)
            targets[k, predictors] = batch.responses[row, :answer]
            offset += length
        position_ids[k, offset:] = torch.arange(shape[1] - offset)  # the tail pad is a block of its own
    device = batch.sequences.device
    return PackedRows(input_ids.to(device), position_ids.to(device), keep.to(device), rows[keep].to(device),
                      columns[keep].to(device), targets[keep].to(device))


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
        logits_to_keep=packed.keep,  # a bool mask: logits come back flattened, [M, V], row-major
        use_cache=False,
    )
    logits = output.logits / temperature  # [M, V]
    shape = batch.response_mask.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    logprobs = logprobs.index_put((packed.rows, packed.columns), logprobs_from_logits(logits, packed.targets).float())
    entropy = None
    if with_entropy:
        entropy = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        entropy = entropy.index_put((packed.rows, packed.columns), entropy_from_logits(logits).float())
    return logprobs, entropy
