"""Rule rewards usable as `reward.function` (signature `fn(prompts, responses, response_ids)`).

They are sanity checks for the RL machinery more than medical objectives: a run that cannot raise
`token_parity` has a bug, whatever its reward model says.
"""

from __future__ import annotations


def token_parity(prompts: list[str], responses: list[str], response_ids: list[list[int]]) -> list[float]:
    """Share of answer tokens (EOS included) with an odd id: pays for one half of the vocabulary.

    A randomly initialised policy scores about 0.5; a working PPO pushes it towards 1. The bundled
    tokenizer's EOS has an even id (2), so stopping early cannot game it.
    """
    return [sum(token % 2 for token in ids) / len(ids) if ids else 0.0 for ids in response_ids]


def answer_length(prompts: list[str], responses: list[str], response_ids: list[list[int]], target: int = 64) -> list[float]:
    """1 for an answer of `target` tokens, falling linearly to 0 at 0 or 2 x `target` tokens."""
    return [max(0.0, 1.0 - abs(len(ids) - target) / target) for ids in response_ids]
