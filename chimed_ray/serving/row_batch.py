"""A running batch whose rows come and go: one left-padded KV cache, rows inserted and removed.

This is how TGI batches models without paged attention (`CausalLMBatch.concatenate` / `filter` in
text-generation-inference's `causal_lm.py`): every row is right-aligned on a shared time axis, so
one decode step appends one column for all rows. A row that joins is prefilled on its own and its
cache is left-padded to the batch's length (or the batch to its length) before the two are
concatenated; rows that leave are dropped with an index select, and columns that only hold padding
for every remaining row are trimmed, so the cache never outgrows its longest live row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache


@dataclass
class RowBatch:
    """KV cache and mask of the rows currently decoding, in the order the scheduler keeps them."""

    cache: DynamicCache  # per layer: keys/values [B, kv_heads, T, head_dim]
    attention_mask: torch.Tensor  # [B, T] long: 1 for a real token, 0 for left padding

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    def position_ids(self) -> torch.Tensor:
        """[B, 1] position of each row's newest token (its count of real tokens minus one)."""
        return self.attention_mask.sum(-1, keepdim=True) - 1


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def concat_rows(first: RowBatch | None, second: RowBatch) -> RowBatch:
    """`first`'s rows then `second`'s, right-aligned on one time axis."""
    if first is None or first.size == 0:
        return second
    length = max(first.length, second.length)
    pad_a, pad_b = length - first.length, length - second.length
    layers = [
        (torch.cat([_left_pad(ka, pad_a, 2), _left_pad(kb, pad_b, 2)]),
         torch.cat([_left_pad(va, pad_a, 2), _left_pad(vb, pad_b, 2)]))
        for (ka, va), (kb, vb) in zip(_layers(first.cache), _layers(second.cache))
    ]
    mask = torch.cat([_left_pad(first.attention_mask, pad_a, 1), _left_pad(second.attention_mask, pad_b, 1)])
    return RowBatch(DynamicCache(ddp_cache_data=layers), mask)


def restorable(batch: RowBatch) -> Callable[[], RowBatch]:
    """A way back to `batch` as it is now, for when a forward fails half-way through its layers.

    transformers' `DynamicCache` grows a layer by replacing its tensors (`torch.cat`), never by
    writing into them, so holding today's tensors (no copy) is enough to undo the layers a failed
    step had already grown.
    """
    layers, mask = _layers(batch.cache), batch.attention_mask
    return lambda: RowBatch(DynamicCache(ddp_cache_data=layers), mask)


def select_rows(batch: RowBatch, keep: list[int]) -> RowBatch | None:
    """Only the rows at `keep` (in that order), without the columns none of them uses; None if empty."""
    if not keep:
        return None
    index = torch.tensor(keep, dtype=torch.long, device=batch.attention_mask.device)
    mask = batch.attention_mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    layers = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
              for k, v in _layers(batch.cache)]
    return RowBatch(DynamicCache(ddp_cache_data=layers), mask[:, start:])
