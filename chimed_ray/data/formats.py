"""Normalise the dataset formats users bring into three shapes: documents (pretraining),
dialogues (SFT) and preference pairs (reward model, DPO).

Supported: plain text / `{"text"}`, ChiMed `[human]:...\\n[bot]:...`, ShareGPT `conversations`,
Alpaca `instruction/input/output` (+ `history`), chat `messages`, OpenRLHF key-configurable
`input_key/output_key`, and preference `prompt/chosen/rejected` (MedicalGPT's `conversations` +
`chosen/rejected` too). `auto` picks the format per record from its keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chimed_ray.data.readers import Record
from chimed_ray.utils.files import InputError

ROLE_ALIASES = {
    "human": "user", "user": "user", "patient": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "doctor": "assistant", "chatgpt": "assistant",
    "system": "system",
}
CHIMED_TURN = re.compile(r"(?:^|\n)\[(human|bot)\]:")


@dataclass
class Keys:
    """Which record keys hold what, for the key-configurable formats."""

    input_key: str = "input"
    output_key: str = "output"
    messages_key: str = "messages"
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"


Message = dict[str, str]  # {"role": "user"|"assistant"|"system", "content": str}


def detect_format(data: dict[str, Any], keys: Keys, source: str = "") -> str:
    """Guess a record's format from its keys; `source` (`file:line`) names the record in errors."""
    if keys.chosen_key in data and keys.rejected_key in data:
        return "preference"
    if "conversations" in data:
        return "sharegpt"
    if keys.messages_key in data:
        return "messages"
    if "instruction" in data:
        return "alpaca"
    if keys.input_key in data and keys.output_key in data:
        return "openrlhf"
    if "text" in data:
        return "chimed" if CHIMED_TURN.search("\n" + str(data["text"])) else "text"
    where = f"{source}: " if source else ""
    raise InputError(f"{where}cannot tell the format from keys {sorted(data)}; set data.format or rename the keys")


def _field(record: Record, key: str, kind: type = str) -> Any:
    if key not in record.data:
        raise InputError(f"{record.source}: missing key {key!r} (has {sorted(record.data)})")
    value = record.data[key]
    if not isinstance(value, kind):
        raise InputError(f"{record.source}: key {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_chimed(text: str, source: str) -> list[Message]:
    """Split `[human]:q\\n[bot]:a\\n[human]:...` into messages."""
    matches = list(CHIMED_TURN.finditer(text))
    if not matches or text[: matches[0].start()].strip():
        raise InputError(f"{source}: ChiMed text must start with [human]: or [bot]:")
    messages = []
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        role = "user" if match.group(1) == "human" else "assistant"
        messages.append({"role": role, "content": text[match.end() : end].strip()})
    return messages


def _messages_from_list(items: Any, record: Record, role_key: str, content_key: str) -> list[Message]:
    if not isinstance(items, list):
        raise InputError(f"{record.source}: expected a list of turns, got {type(items).__name__}")
    messages = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise InputError(f"{record.source}: turn {index} needs keys {role_key!r} and {content_key!r}")
        role = ROLE_ALIASES.get(str(item[role_key]).lower())
        if role is None:
            raise InputError(f"{record.source}: turn {index} has unknown role {item[role_key]!r}")
        messages.append({"role": role, "content": str(item[content_key])})
    return messages


def to_messages(record: Record, fmt: str, keys: Keys) -> list[Message]:
    """A dialogue record as chat messages (system?, user, assistant, user, assistant, ...)."""
    fmt = detect_format(record.data, keys, record.source) if fmt == "auto" else fmt
    data = record.data
    if fmt == "chimed":
        messages = parse_chimed(_field(record, "text"), record.source)
    elif fmt == "sharegpt":
        messages = _messages_from_list(_field(record, "conversations", list), record, "from", "value")
    elif fmt == "messages":
        messages = _messages_from_list(_field(record, keys.messages_key, list), record, "role", "content")
    elif fmt == "alpaca":
        messages = _alpaca_history(record)
        prompt = _field(record, "instruction")
        if data.get("input"):
            prompt = f"{prompt}\n{data['input']}"
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _field(record, "output")}]
        if data.get("system"):
            messages.insert(0, {"role": "system", "content": str(data["system"])})
    elif fmt == "openrlhf":
        prompt = data.get(keys.input_key)
        if isinstance(prompt, list):
            messages = _messages_from_list(prompt, record, "role", "content")
        else:
            messages = [{"role": "user", "content": _field(record, keys.input_key)}]
        messages.append({"role": "assistant", "content": _field(record, keys.output_key)})
    else:
        raise InputError(f"{record.source}: format {fmt!r} is not a dialogue format")
    _check_dialogue(messages, record.source)
    return messages


def _alpaca_history(record: Record) -> list[Message]:
    """Alpaca's `history`: earlier turns as `[[question, answer], ...]`."""
    history = record.data.get("history") or []
    if not isinstance(history, list):
        raise InputError(f"{record.source}: key 'history' should be a list of [question, answer] pairs, got {type(history).__name__}")
    messages = []
    for index, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise InputError(f"{record.source}: history[{index}] should be a [question, answer] pair of strings, got {pair!r:.80}")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _check_dialogue(messages: list[Message], source: str) -> None:
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "assistant":
        raise InputError(f"{source}: dialogue must end with an assistant answer")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise InputError(f"{source}: turn {index} should be {expected}, got {message['role']}")


def to_text(record: Record, fmt: str, keys: Keys) -> str:
    """A pretraining document: `text` as is; dialogues rendered in the ChiMed format."""
    fmt = detect_format(record.data, keys, record.source) if fmt == "auto" else fmt
    if fmt in ("text", "chimed"):
        return _field(record, "text")
    messages = to_messages(record, fmt, keys)
    tags = {"user": "[human]:", "assistant": "[bot]:", "system": ""}
    return "\n".join(tags[m["role"]] + m["content"] for m in messages)


@dataclass
class PreferencePair:
    """A prompt (as messages) with a better and a worse answer."""

    prompt: list[Message]
    chosen: str
    rejected: str


def _answer(record: Record, key: str) -> str:
    value = record.data.get(key)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", value[-1].get("value", "")))
    if not isinstance(value, str):
        raise InputError(f"{record.source}: key {key!r} should be a string or a message list")
    return value


def to_preference(record: Record, keys: Keys) -> PreferencePair:
    """A preference record: `prompt`/`chosen`/`rejected` (prompt may be a message list), or
    MedicalGPT's `conversations` (the prompt dialogue) with `chosen`/`rejected`."""
    data = record.data
    for key in (keys.chosen_key, keys.rejected_key):
        if key not in data:
            raise InputError(f"{record.source}: missing key {key!r} (has {sorted(data)})")
    if "conversations" in data:
        prompt = _messages_from_list(data["conversations"], record, "from", "value")
    elif isinstance(data.get(keys.prompt_key), list):
        prompt = _messages_from_list(data[keys.prompt_key], record, "role", "content")
    elif isinstance(data.get(keys.chosen_key), list):
        prompt = _messages_from_list(data[keys.chosen_key][:-1], record, "role", "content")
    else:
        prompt = [{"role": "user", "content": _field(record, keys.prompt_key)}]
    if not prompt or prompt[-1]["role"] != "user":
        raise InputError(f"{record.source}: the prompt must end with a user turn")
    return PreferencePair(prompt, _answer(record, keys.chosen_key), _answer(record, keys.rejected_key))
