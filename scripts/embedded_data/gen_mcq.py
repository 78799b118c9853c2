"""C-Eval-style MCQs (4 options, with a 5-per-subject dev split for few-shot prompts) and
MedQA-MCMLE-style case questions (5 options). Answer letters are balanced within each file."""

from __future__ import annotations

import random

import mcq_items as mi
from common import balanced_letters, rng_for
from facts import DISEASES, DRUGS, HANDWRITTEN_MCQ, LABS

PER_SUBJECT_TEST = 40
PER_SUBJECT_DEV = 5
MEDQA_DIAGNOSIS = 40
MEDQA_KEY_TEST = 10


def take(pool: list[dict | None], count: int, rng: random.Random) -> list[dict]:
    items = [it for it in pool if it is not None]
    rng.shuffle(items)
    if len(items) < count:
        raise ValueError(f"MCQ pool has {len(items)} items, need {count}")
    return items[:count]


def handwritten(subject: str) -> list[dict]:
    return [mi.item(s, q, c, list(w), e) for s, q, c, w, e in HANDWRITTEN_MCQ if s == subject]


def subject_pools(mcq_diseases: list, rng: random.Random) -> dict[str, list[dict]]:
    """45 items per subject, each a fixed mix of question types."""
    need = PER_SUBJECT_TEST + PER_SUBJECT_DEV
    with_key = [d for d in DISEASES if d.key_test]
    hand_basic, hand_phys = handwritten("basic_medicine"), handwritten("physician")
    return {
        "clinical_medicine": take([mi.dept_item(d, rng) for d in DISEASES], 15, rng)
        + take([mi.diagnosis_item(d, rng, 3) for d in mcq_diseases], 15, rng)
        + take([mi.key_test_item(d, rng, 3) for d in with_key], need - 30, rng),
        "basic_medicine": hand_basic + take([mi.lab_item(lab, rng) for lab in LABS], need - len(hand_basic), rng),
        "pharmacology": take([mi.class_item(g, rng) for g in DRUGS], 25, rng)
        + take([mi.hallmark_item(g, rng) for g in DRUGS if g.hallmark], need - 25, rng),
        "physician": hand_phys + take([mi.red_flag_item(d, rng) for d in DISEASES], need - len(hand_phys), rng),
    }


def lettered(items: list[dict], letters: str, rng: random.Random) -> list[tuple[dict, dict[str, str], str]]:
    """Place each correct option at a balanced random letter; wrong options fill the rest in random order."""
    out = []
    for it, answer in zip(items, balanced_letters(len(items), letters, rng), strict=True):
        wrong = list(it["wrong"])
        rng.shuffle(wrong)
        options = {}
        for letter in letters:
            options[letter] = it["correct"] if letter == answer else wrong.pop()
        out.append((it, options, answer))
    return out


def ceval_rows(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for number, (it, options, answer) in enumerate(lettered(items, "ABCD", rng), start=1):
        rows.append({"id": number, "subject": it["subject"], "question": it["question"], **options,
                     "answer": answer, "explanation": it["explanation"]})
    return rows


def medqa_rows(diseases: list, rng: random.Random) -> list[dict]:
    with_key = [d for d in diseases if d.key_test]
    items = [mi.diagnosis_item(d, rng, 4) for d in diseases[:MEDQA_DIAGNOSIS]]
    items += [mi.key_test_item(d, rng, 4, with_vignette=True) for d in with_key[:MEDQA_KEY_TEST]]
    rng.shuffle(items)
    return [{"question": it["question"], "options": options, "answer": answer, "meta_info": it["subject"]}
            for it, options, answer in lettered(items, "ABCDE", rng)]


def build() -> dict[str, list[dict]]:
    rng = rng_for("mcq")
    eligible = [d for d in DISEASES if mi.vignette_eligible(d)]
    rng.shuffle(eligible)
    medqa_diseases, mcq_diseases = eligible[:MEDQA_DIAGNOSIS + 5], eligible[MEDQA_DIAGNOSIS + 5:]
    test, dev = [], []
    for pool in subject_pools(mcq_diseases, rng).values():
        rng.shuffle(pool)
        dev += pool[:PER_SUBJECT_DEV]
        test += pool[PER_SUBJECT_DEV:]
    rng.shuffle(test)
    return {
        "eval/mcq.jsonl": ceval_rows(test, rng),
        "eval/mcq_dev.jsonl": ceval_rows(dev, rng),
        "eval/medqa.jsonl": medqa_rows(medqa_diseases, rng),
    }
