"""What OpenRLHF reads from us: the rollout prompts in its format and the SFT model with the ChiMed
chat template in its tokenizer.

OpenRLHF's `PromptDataset` (with `--data.apply_chat_template`) renders each line's `input`
messages through the tokenizer's chat template; with `CHIMED_CHAT_TEMPLATE` that is exactly our
`[human]:...\\n[bot]:` prompt, token for token (tests/openrlhf/test_export.py checks it with
OpenRLHF's own class). OpenRLHF does not truncate prompts, so a prompt longer than
`rollout.max_prompt_length` tokens loses the start of its last user message until it fits (our
engine keeps its last tokens instead).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chimed_ray.utils.files import InputError, atomic_directory, atomic_write_text

if TYPE_CHECKING:
    from chimed_ray.config.rlhf import PPOConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class ExportedPrompts:
    path: Path
    count: int  # lines written (total_steps x prompts_per_step)
    shortened: int  # distinct prompts cut to fit max_prompt_length
    dropped: int  # distinct prompts that cannot fit even without their user text


def chimed_tokenizer(config: "PPOConfig"):
    """The policy's tokenizer with ChiMed's chat template set (replacing any other)."""
    from chimed_ray.models import load_tokenizer
    from chimed_ray.models.tokenizer import CHIMED_CHAT_TEMPLATE

    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path, config.model.trust_remote_code)
    tokenizer.chat_template = CHIMED_CHAT_TEMPLATE
    return tokenizer


def fit_prompt(messages: list[dict[str, str]], tokenizer, max_tokens: int) -> list[dict[str, str]] | None:
    """`messages`, with the start of the last user message cut until the rendered prompt has at
    most `max_tokens` tokens (binary search on characters); None if nothing fits."""
    from chimed_ray.rollout.prompts import render_prompt

    def length(candidate: list[dict[str, str]]) -> int:
        return len(tokenizer(render_prompt(candidate, tokenizer.eos_token), add_special_tokens=False)["input_ids"])

    if length(messages) <= max_tokens:
        return messages
    content = messages[-1]["content"]

    def cut(start: int) -> list[dict[str, str]]:
        return messages[:-1] + [{**messages[-1], "content": content[start:]}]

    low, high = 1, len(content)  # find the smallest cut that fits
    if length(cut(high)) > max_tokens:
        return None
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if length(cut(middle)) <= max_tokens else (middle + 1, high)
    return cut(low)


def export_prompts(config: "PPOConfig", tokenizer, path: Path) -> ExportedPrompts:
    """Write the prompts our engine would use over the run, in its order, as OpenRLHF JSONL."""
    from chimed_ray.rollout.prompts import load_prompts
    from chimed_ray.trainers.ppo_state import PromptOrder

    rollout = config.rollout
    prompts = load_prompts(config.data, tokenizer, rollout.max_prompt_length, config.data.max_samples)
    fitted = [fit_prompt(prompt.messages, tokenizer, rollout.max_prompt_length) for prompt in prompts]
    kept = [messages for messages in fitted if messages is not None]
    if not kept:
        raise InputError(f"no prompt fits rollout.max_prompt_length={rollout.max_prompt_length} tokens")
    order = PromptOrder(len(kept), config.optim.seed).take(0, config.total_steps * rollout.prompts_per_step)
    lines = [json.dumps({"input": kept[index]}, ensure_ascii=False) for index in order]
    atomic_write_text(path, "\n".join(lines) + "\n")
    shortened = sum(1 for before, after in zip(prompts, fitted) if after is not None and after != before.messages)
    return ExportedPrompts(path, len(lines), shortened, len(prompts) - len(kept))


def handover_model(model_path: str, tokenizer, target: Path) -> Path:
    """`target`: the SFT model's files linked (weights are not copied) and the ChiMed-templated
    tokenizer saved beside them, so OpenRLHF's actor, reference and vLLM all read our template."""
    source = Path(model_path)
    if not (source / "config.json").is_file():
        raise InputError(f"model.path: {source} is not an HF checkpoint (no config.json)")
    with atomic_directory(target) as tmp:
        for item in sorted(source.iterdir()):
            if item.name not in TOKENIZER_FILES and not item.name.startswith("."):
                os.symlink(item.resolve(), tmp / item.name)
        tokenizer.save_pretrained(str(tmp))
    return target
