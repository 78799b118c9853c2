"""Turn normalised records into training tensors: packed pretraining blocks and SFT examples with
the loss on answer tokens only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from chimed_ray.data.formats import Message
from chimed_ray.models.tokenizer import BOT_TAG, HUMAN_TAG

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def pack_documents(documents: Sequence[str], tokenizer: "PreTrainedTokenizerBase", block_size: int) -> list[list[int]]:
    """Tokenize documents, join them with EOS and cut the stream into `block_size` blocks.

    The incomplete tail is dropped, as in HF's `run_clm` and nanoGPT.
    """
    stream: list[int] = []
    for text in documents:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    return [stream[start : start + block_size] for start in range(0, len(stream) - block_size + 1, block_size)]


def dialogue_segments(messages: list[Message], eos_token: str) -> list[tuple[str, bool]]:
    """The ChiMed rendering of a dialogue as (text, is_answer) segments.

    Concatenated, the segments equal the tokenizer's chat template output, so what the model is
    trained on is exactly what serving sends it.
    """
    segments: list[tuple[str, bool]] = []
    prompt = ""
    for message in messages:
        if message["role"] == "system":
            prompt += message["content"] + "\n"
        elif message["role"] == "user":
            prompt += HUMAN_TAG + message["content"] + "\n"
        else:
            segments.append((prompt + BOT_TAG, False))
            segments.append((message["content"] + eos_token, True))
            prompt = "\n"
    if prompt.strip():
        segments.append((prompt, False))
    return segments


def tokenize_dialogue(
    messages: list[Message], tokenizer: "PreTrainedTokenizerBase", max_length: int, train_on_prompt: bool = False
) -> tuple[list[int], list[int]] | None:
    """Token ids and labels for one dialogue; labels are IGNORE_INDEX outside answers.

    Every assistant turn of a multi-turn dialogue is a target, including its closing EOS.
    Returns None when truncation to `max_length` leaves no answer token.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in dialogue_segments(messages, tokenizer.eos_token):
        # split_special_tokens=False keeps "</s>" as the single EOS id.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if (is_answer or train_on_prompt) else [IGNORE_INDEX] * len(ids))
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return input_ids, labels


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` tokens, longest first (SFT
    packing here, the PPO score/train forwards in `distributed/packing.py`)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        target = next((k for k, free in enumerate(room) if free >= lengths[row]), None)
        if target is None:
            bins.append([]), room.append(capacity)
            target = len(bins) - 1
        bins[target].append(row)
        room[target] -= lengths[row]
    return bins


def pack_examples(
    examples: Sequence[tuple[list[int], list[int]]], capacity: int
) -> list[tuple[list[int], list[int], list[int]]]:
    """SFT examples laid end to end in bins of at most `capacity` tokens (first-fit, longest
    first), as TRL's `packing=True` and OpenRLHF's `--packing_samples` train: (input_ids, labels,
    position_ids) per bin. Position ids restart at 0 at each example, which transformers reads as
    sequence boundaries (a block-diagonal causal mask under sdpa/eager, varlen flash-attention),
    and each example's first label is IGNORE_INDEX, so no loss crosses from one example into the next.
    """
    bins = []
    for members in first_fit([len(ids) for ids, _ in examples], capacity):
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            ids, targets = examples[index]
            input_ids += ids
            labels += [IGNORE_INDEX] + list(targets[1:])
            positions += range(len(ids))
        bins.append((input_ids, labels, positions))
    return bins


@dataclass
class LMBatch:
    """A causal-LM batch: right-padded rows, or packed bins whose `position_ids` restart at each
    example (the model then gets no mask, so attention stays inside each example)."""

    input_ids: "torch.Tensor"  # [B, T]
    attention_mask: "torch.Tensor"  # [B, T]: 1 on real tokens
    labels: "torch.Tensor"  # [B, T], IGNORE_INDEX where no loss
    position_ids: Optional["torch.Tensor"] = None  # [B, T] when packed

    def to(self, device: "torch.device") -> "LMBatch":
        positions = None if self.position_ids is None else self.position_ids.to(device)
        return LMBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), positions)

    def model_inputs(self) -> dict[str, "torch.Tensor"]:
        """Keyword arguments of the model's forward (labels included)."""
        inputs = {"input_ids": self.input_ids, "labels": self.labels}
        if self.position_ids is not None:  # transformers reads restarts as boundaries only without a mask or cache
            inputs.update(position_ids=self.position_ids, use_cache=False)
        else:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def num_target_tokens(self) -> int:
        # The first position is never a target after the causal shift.
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate_lm(examples: Sequence[tuple[list[int], ...]], pad_token_id: int) -> LMBatch:
    """Right-pad (input_ids, labels) pairs, or packed (input_ids, labels, position_ids) bins, to
    the longest in the batch. A bin's padding gets positions of its own (restarting at 0), so it
    is a separate sequence that no real token attends to."""
    import torch

    width = max(len(example[0]) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = len(examples[0]) == 3
    position_ids = torch.zeros((len(examples), width), dtype=torch.long) if packed else None
    for row, (ids, target, *positions) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(target)] = torch.tensor(target)
        attention_mask[row, : len(ids)] = 1
        if packed:
            position_ids[row, : len(ids)] = torch.tensor(positions[0])
            position_ids[row, len(ids):] = torch.arange(width - len(ids))
    return LMBatch(input_ids, attention_mask, labels, position_ids)
