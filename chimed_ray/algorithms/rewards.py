"""Turning one reward-model score per response into per-token rewards."""

from __future__ import annotations

import torch
from torch import Tensor

from chimed_ray.algorithms.masks import zero_masked


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index of the last valid token of each row (0 for rows with no valid token).

    Args:
        response_mask: `[B, T]` 0/1 mask.

    Returns:
        `[B]` long tensor of positions.
    """
    length = response_mask.shape[1]
    position = torch.arange(length, device=response_mask.device).expand_as(response_mask)  # [B, T]
    valid_positions = torch.where(response_mask != 0, position, torch.zeros_like(position))
    return valid_positions.max(dim=1).values


def token_level_rewards(
    sequence_scores: Tensor,
    kl: Tensor,
    response_mask: Tensor,
    kl_coef: float,
) -> Tensor:
    """Per-token rewards for PPO: -kl_coef * KL on every response token, plus the score on the last one.

    The reward model judges a whole answer, so its score arrives when the answer ends; the KL
    penalty is paid token by token as the policy moves away from the reference.

    Args:
        sequence_scores: `[B]` reward-model score of each response.
        kl: `[B, T]` per-token KL estimate (see `kl_penalty`).
        response_mask: `[B, T]` 0/1 mask of response tokens.
        kl_coef: KL penalty coefficient (e.g. a KL controller's `value`).

    Returns:
        `[B, T]` float rewards, 0 outside the mask. Rows with no valid token get all zeros.
    """
    rewards = zero_masked(-kl_coef * kl.float(), response_mask)  # [B, T]
    has_tokens = (response_mask != 0).any(dim=1)  # [B]
    scores = torch.where(has_tokens, sequence_scores.float(), torch.zeros_like(sequence_scores, dtype=torch.float32))
    last = last_token_index(response_mask).unsqueeze(1)  # [B, 1]
    return rewards.scatter_add(dim=1, index=last, src=scores.unsqueeze(1))
