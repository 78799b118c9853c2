"""Padding token rows into one tensor: prompts on the left (generation and PPO rollouts), whole
sequences on the right (reward pairs, scoring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


def left_pad(prompts: list[list[int]], pad_token_id: int, device: Optional["torch.device"] = None):
    """Left-pad prompts to one width: `(input_ids [B, P], attention_mask [B, P])`."""
    import torch

    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def right_pad(rows: list[list[int]], pad_token_id: int):
    """Right-pad token rows to one width: `(input_ids [B, T], attention_mask [B, T])`."""
    import torch

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
