"""Prompts for rollouts: the first user turn of each dialogue (plus any system message), rendered
in the ChiMed format up to `[bot]:`, exactly as SFT trained the model to continue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chimed_ray.data.formats import Keys, detect_format, to_messages, to_preference
from chimed_ray.data.readers import Record
from chimed_ray.data.tokenize import dialogue_segments
from chimed_ray.utils.files import InputError

if TYPE_CHECKING:
    from chimed_ray.config import DataConfig


@dataclass
class Prompt:
    """One rollout prompt: its messages, the rendered text and its token ids."""

    messages: list[dict[str, str]]
    text: str
    token_ids: list[int]


def first_user_turn(record: Record, fmt: str, keys: Keys) -> list[dict[str, str]]:
    """Messages up to and including the first user turn.

    A prompt-only record (a `prompt_key` or `input_key` string and no answer) is used as is; a
    preference record gives its prompt; a dialogue in any SFT format its first user turn.
    """
    data = record.data
    if keys.chosen_key not in data and keys.output_key not in data:
        for key in (keys.prompt_key, keys.input_key):
            if isinstance(data.get(key), str):
                return [{"role": "user", "content": data[key]}]
    if fmt in ("auto", "preference") and detect_format(data, keys, record.source) == "preference":
        return to_preference(record, keys).prompt
    messages = to_messages(record, fmt, keys)
    end = next(i for i, message in enumerate(messages) if message["role"] == "user")
    return messages[: end + 1]


def render_prompt(messages: list[dict[str, str]], eos_token: str) -> str:
    """The ChiMed text the model continues: `[human]:...\\n[bot]:` (same as SFT's segments)."""
    segments = dialogue_segments(messages + [{"role": "assistant", "content": ""}], eos_token)
    return "".join(text for text, is_answer in segments[:-1] if not is_answer)


def load_prompts(data: "DataConfig", tokenizer, max_prompt_length: int, limit: int = 0) -> list[Prompt]:
    """Prompts from `data.train_files` (default: the bundled SFT dialogues).

    Prompts longer than `max_prompt_length` tokens keep their last tokens (the `[bot]:` cue must
    survive). Raises InputError if no prompt is left.
    """
    from chimed_ray.data.splits import keys_of, load_split

    keys = keys_of(data)
    records, _ = load_split(data, "sft", check=lambda record: first_user_turn(record, data.format, keys))
    prompts = []
    for record in records:
        messages = first_user_turn(record, data.format, keys)
        text = render_prompt(messages, tokenizer.eos_token)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_length:]
        prompts.append(Prompt(messages, text, ids))
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise InputError(f"no prompts found in {data.train_files or 'the bundled SFT data'}")
    return prompts
