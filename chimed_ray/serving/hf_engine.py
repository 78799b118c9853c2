"""Batched generation with HF `generate`: left-padded prompts, KV cache, per-sequence sampling.

`generate` itself decodes greedily; `PerRowSampler` (a logits processor) has already drawn each
sequence's token with that sequence's own temperature, top-p and seeded RNG and masks every other
token, so one batch can mix requests with different settings. `RowStopper` (a stopping criterion)
feeds each new token to its `RowState`, which handles EOS, stop strings, the token budget and
streaming. Blocking: the model server calls `generate` in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from chimed_ray.serving.sampling import RowState, make_generator, sample_token

logger = logging.getLogger("ray.serve")


class PerRowSampler(LogitsProcessor):
    """Draws each row's next token with its own settings; returns scores that select exactly it."""

    def __init__(self, rows: list[RowState], device: torch.device, eos_ids: set[int], pad_id: int):
        self.rows = rows
        self.generators = [make_generator(row.seed, device) for row in rows]
        self.eos_ids = sorted(eos_ids)
        self.pad_id = pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = []
        for index, row in enumerate(self.rows):
            if row.finished:
                chosen.append(self.pad_id)
                continue
            logits = scores[index]
            if row.ignore_eos and self.eos_ids:
                logits = logits.clone()
                logits[self.eos_ids] = float("-inf")
            chosen.append(sample_token(logits, row.temperature, row.top_p, self.generators[index]))
        selected = torch.full_like(scores, float("-inf"))
        selected[torch.arange(len(chosen), device=scores.device), torch.tensor(chosen, device=scores.device)] = 0.0
        return selected


class RowStopper(StoppingCriteria):
    """Hands each new token to its row; a row is done once its state says so."""

    def __init__(self, rows: list[RowState], tokenizer: Any, eos_ids: set[int]):
        self.rows = rows
        self.eos_ids = eos_ids
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            row.add_token(token, self.decode, self.eos_ids)
        return torch.tensor([row.finished for row in self.rows], dtype=torch.bool, device=input_ids.device)


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
    """One checkpoint loaded with transformers, generating for a list of rows at a time."""

    is_async = False

    def __init__(self, path: str, device: str, precision: str, trust_remote_code: bool,
                 attn_implementation: str, max_context: int):
        from chimed_ray.models import load_causal_lm, load_tokenizer

        self.device, self.precision = resolve_device(device, precision)
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        model = load_causal_lm(path, self.precision, trust_remote_code, attn_implementation)
        self.model = model.to(self.device).eval()
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.eos_ids = _eos_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        logger.info("loaded %s on %s (%s), context %d", path, self.device, self.precision, self.max_context)

    def generate(self, rows: list[RowState]) -> None:
        """Generate every row to completion (blocking); results and stream events land in the rows."""
        padded = self.tokenizer.pad({"input_ids": [row.prompt_ids for row in rows]}, padding=True, return_tensors="pt")
        config = GenerationConfig(
            max_new_tokens=max(row.max_tokens for row in rows),
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=padded["input_ids"].to(self.device),
                attention_mask=padded["attention_mask"].to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([PerRowSampler(rows, self.device, self.eos_ids, self.pad_id)]),
                stopping_criteria=StoppingCriteriaList([RowStopper(rows, self.tokenizer, self.eos_ids)]),
            )
        for row in rows:  # the loop ran out of max_new_tokens before a row's own check fired
            if not row.finished:
                row.update_text(row.text, "length")

    def check_health(self) -> None:
        """Raise if the model cannot run (Serve restarts the replica)."""
        if self.device == "cuda":
            torch.cuda.synchronize()


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
