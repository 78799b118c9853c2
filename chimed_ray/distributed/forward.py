"""Forward passes over a `RolloutBatch` shared by the policy, reference and critic workers.

Answer token t sits at column P + t; it was sampled from the logits at column P + t - 1, and the
critic's V(s_t) is read at that same column. Positions skip the left padding exactly as HF
`generate` numbered them, so the log-probs match the sampling distribution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from chimed_ray.algorithms import entropy_from_logits, logprobs_from_logits
from chimed_ray.models.heads import position_ids_from_mask, token_values

if TYPE_CHECKING:
    from chimed_ray.distributed.batch import RolloutBatch


def response_logprobs(
    model: torch.nn.Module, batch: "RolloutBatch", temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Optional[Tensor]]:
    """Log-probabilities (and entropies) of the answer tokens under `model` (a DeepSpeed engine or
    an HF model; called at the top level so ZeRO-3's gather hooks fire).

    Args:
        entropy_grad: False computes the entropy without a graph (its coefficient is 0, it is only
            logged), so no `[B, R, V]` float32 intermediates are kept for backward.

    Returns:
        `(logprobs [B, R], entropy [B, R] or None)`, float32; gradients flow when enabled.
    """
    from chimed_ray.distributed.packing import can_pack, packed_response_logprobs

    if can_pack(model, batch):  # the same numbers without the padding (distributed/packing.py)
        return packed_response_logprobs(model, batch, temperature, with_entropy)
    width = batch.response_mask.shape[1]
    output = model(
        input_ids=batch.sequences,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_mask(batch.attention_mask),
        logits_to_keep=width + 1,  # only the columns that predict answer tokens
        use_cache=False,
    )
    logits = output.logits[:, :-1] / temperature  # [B, R, V]
    logprobs = logprobs_from_logits(logits, batch.responses)  # [B, R]
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits)
    return logprobs, entropy


def response_values(model: torch.nn.Module, batch: "RolloutBatch") -> Tensor:
    """The critic's value of the state before each answer token: `[B, R]` float32. `model` is the
    DeepSpeed engine (or the HF model): its top-level forward runs, so ZeRO-3's hooks fire."""
    values = token_values(model, batch.sequences, batch.attention_mask)  # [B, P + R]
    return values[:, batch.prompt_width - 1 : -1]


def no_grad_in_micro_batches(function, batch: "RolloutBatch", micro_batch_size: int) -> Tensor:
    """Apply `function(micro_batch) -> Tensor [b, ...]` without gradients, micro-batch by
    micro-batch, and concatenate the results on CPU."""
    with torch.no_grad():
        return torch.cat([function(micro).float().cpu() for micro in batch.micro_batches(micro_batch_size)], dim=0)
