"""Continuous batching with plain HF forwards: the CPU engine, and the GPU one without vLLM.

`HFEngine` loads one checkpoint and provides the two forwards that `ContinuousBatcher` schedules:
a prefill of new prompts (left-padded among themselves) and a one-token decode step over every
live row, both on a `RowBatch` KV cache that rows join and leave between steps. Each row is
sampled with its own temperature, top-p, penalties and seeded RNG, so one step mixes requests
with different settings.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import torch
from transformers import DynamicCache

from chimed_ray.serving.row_batch import RowBatch
from chimed_ray.serving.sampling import RowState
from chimed_ray.serving.scheduler import ContinuousBatcher

logger = logging.getLogger("ray.serve")


def resolve_device(device: str, precision: str) -> tuple[str, str]:
    """`auto` picks cuda+bf16 when this replica sees a GPU, else cpu+fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("engine.device=cuda but this replica sees no GPU; set deployment.num_gpus >= 1")
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return device, precision


class HFEngine:
    """One checkpoint loaded with transformers, generating rows under continuous batching."""

    def __init__(self, path: str, device: str, precision: str, trust_remote_code: bool,
                 attn_implementation: str, max_context: int, max_rows: int = 8,
                 max_prefill_tokens: int = 2048, stall_timeout_s: float = 120.0):
        from chimed_ray.models import load_causal_lm, load_tokenizer

        self.device, self.precision = resolve_device(device, precision)
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_causal_lm(path, self.precision, trust_remote_code, attn_implementation)
        self.model = model.to(self.device).eval()
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.eos_ids = _eos_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        # transformers 5 renamed `past_key_values` to `cache`; 4.56+ still wants the old name
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.batcher = ContinuousBatcher(self, max_rows, max_prefill_tokens, stall_timeout_s)
        logger.info("loaded %s on %s (%s), context %d", path, self.device, self.precision, self.max_context)

    async def generate(self, rows: list[RowState]) -> None:
        """Generate `rows` to completion. Cancelled, it marks them cancelled and returns only once
        they have left the batch (so a caller holding a lock keeps it until generation ends)."""
        done = asyncio.wrap_future(self.batcher.submit(rows))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            for row in rows:
                row.cancelled = True
            await done
            raise

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, RowBatch]:
        """Logits of each prompt's last position [N, V] and the KV cache of the new rows."""
        length = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for index, ids in enumerate(prompts):
            input_ids[index, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[index, length - len(ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as HF generate does for left padding
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self._cache_arg: DynamicCache()})
        return out.logits[:, -1, :].float(), RowBatch(_cache_of(out), mask)

    def decode(self, batch: RowBatch, tokens: torch.Tensor) -> tuple[torch.Tensor, RowBatch]:
        """Feed one token per row [B]; logits [B, V] and the batch grown by one column."""
        mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((batch.size, 1))], dim=1)
        grown = RowBatch(batch.cache, mask)
        with torch.inference_mode():
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=grown.position_ids(),
                             use_cache=True, **{self._cache_arg: batch.cache})
        return out.logits[:, -1, :].float(), RowBatch(_cache_of(out), mask)

    def decode_text(self, ids: list[int]) -> str:
        """`tokenizer.decode(ids, skip_special_tokens=True)`, straight to the Rust tokenizer when
        there is one: the Python wrapper converts the list element by element on every step."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is None or not hasattr(backend, "decode"):
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        text = backend.decode(ids, skip_special_tokens=True)
        if getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            text = self.tokenizer.clean_up_tokenization(text)
        return text

    def check_health(self) -> None:
        """Raise if generation is stuck or its thread died, or the GPU errored (Serve restarts us)."""
        self.batcher.check_health()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def stats(self) -> dict[str, Any]:
        stats = self.batcher.stats
        return {"steps": stats.steps, "prefills": stats.prefills, "largest_batch": stats.largest_batch,
                "rows_failed": stats.rows_failed}


def _cache_of(output: Any) -> DynamicCache:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
