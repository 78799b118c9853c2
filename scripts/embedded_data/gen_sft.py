"""SFT conversations plus the QA and dialogue evaluation sets, split so that evaluation never sees
a training question, entity or phrasing.

The QA and dialogue evaluation sets ask only about the held-out entities (held_out.py), which no
training file mentions, and are worded with held-out phrasings (question templates, answer
boilerplate and dialogue leads that training never uses). Among the trained entities, single-turn
items are split over question keys (entity x question type): each key lands in exactly one of
SFT-train, SFT-eval or the preference pool. SFT dialogues are split over diseases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import qa
from common import rng_for
from dialogue import FLOWS, conversation
from facts import DISEASES as DISEASES_BY_ORDER
from held_out import HELD_OUT, HELD_OUT_DISEASES, TRAIN_DISEASES

QA_EVAL_SIZE = 120
SFT_EVAL_SINGLE = 60
PREFERENCE_KEYS = 360
SFT_EVAL_DIALOGUE_DISEASES = 7
SINGLE_TURN_SHARE = 0.6  # share of single-turn QA among SFT training conversations


@dataclass
class KeySplit:
    qa_eval: list[qa.Key] = field(default_factory=list)
    sft_eval: list[qa.Key] = field(default_factory=list)
    preference: list[qa.Key] = field(default_factory=list)
    sft_train: list[qa.Key] = field(default_factory=list)


def split_keys(train_single_count: int) -> KeySplit:
    every = qa.all_keys()
    held = [key for key in every if key[1] in HELD_OUT]
    rng_for("qa-eval").shuffle(held)
    keys = [key for key in every if key[1] not in HELD_OUT]
    rng_for("key-split").shuffle(keys)
    split = KeySplit()
    split.qa_eval = held[:QA_EVAL_SIZE]
    split.sft_eval = keys[:SFT_EVAL_SINGLE]
    start = SFT_EVAL_SINGLE
    split.preference = keys[start:start + PREFERENCE_KEYS]
    split.sft_train = keys[start + PREFERENCE_KEYS:start + PREFERENCE_KEYS + train_single_count]
    if len(split.sft_train) < train_single_count:
        raise ValueError(f"only {len(split.sft_train)} single-turn keys left for SFT train, need {train_single_count}")
    return split


def split_dialogue_diseases() -> tuple[list, list, list]:
    """(dialogue-eval diseases: the held-out ones, SFT-eval diseases, SFT-train diseases)."""
    diseases = list(TRAIN_DISEASES)
    rng_for("dialogue-split").shuffle(diseases)
    held = [d for d in DISEASES_BY_ORDER if d.name in HELD_OUT_DISEASES]
    return held, diseases[:SFT_EVAL_DIALOGUE_DISEASES], diseases[SFT_EVAL_DIALOGUE_DISEASES:]


def single_turn(key: qa.Key, rng, held_out: bool) -> dict:
    return {"conversations": [
        {"from": "human", "value": qa.question(key, rng, held_out=held_out)},
        {"from": "gpt", "value": qa.answer(key, rng)},
    ]}


def dialogues(diseases: list, rng, style: str = "train") -> list[dict]:
    return [{"conversations": conversation(d, flow, rng, style)} for d in diseases for flow in range(len(FLOWS))]


def build(practice: list[dict]) -> dict[str, list[dict]]:
    """Rows for sft/train (with the MCQ `practice` conversations), sft/eval, eval/qa and
    eval/dialogue, plus the preference key pool."""
    rng = rng_for("sft")
    dialogue_eval, sft_eval_diseases, train_diseases = split_dialogue_diseases()
    train_multi = dialogues(train_diseases, rng)
    train_single_count = round(len(train_multi) * SINGLE_TURN_SHARE / (1 - SINGLE_TURN_SHARE))
    split = split_keys(train_single_count)
    sft_train = [single_turn(key, rng, held_out=False) for key in split.sft_train] + train_multi + practice
    rng.shuffle(sft_train)
    sft_eval = [single_turn(key, rng, held_out=True) for key in split.sft_eval] + dialogues(sft_eval_diseases, rng)
    rng.shuffle(sft_eval)
    qa_eval = [{"question": qa.question(key, rng, held_out=True), "answer": qa.answer(key, rng, style="eval")}
               for key in split.qa_eval]
    return {
        "sft/train.jsonl": sft_train,
        "sft/eval.jsonl": sft_eval,
        "eval/qa.jsonl": qa_eval,
        "eval/dialogue.jsonl": dialogues(dialogue_eval, rng, style="eval"),
        "_preference_keys": split.preference,
    }
