"""C-Eval-style MCQs (4 options, with a 5-per-subject dev split for few-shot prompts),
MedQA-MCMLE-style case questions (5 options), and exam-practice conversations for SFT.

Every item asks about a trained entity (the pretraining corpus teaches its facts). Practice items
are the pool's leftovers: other entities, so no evaluation question (or its fact) is practised;
MedQA's diseases are left out of practice altogether. Answer letters are balanced within each file.
"""

from __future__ import annotations

import random

import mcq_items as mi
from common import balanced_letters, rng_for
from facts import HANDWRITTEN_MCQ
from held_out import TRAIN_DISEASES as DISEASES
from held_out import TRAIN_DRUGS as DRUGS
from held_out import TRAIN_LABS as LABS

PER_SUBJECT_TEST = 40
PER_SUBJECT_DEV = 5
MEDQA_DIAGNOSIS = 40
MEDQA_KEY_TEST = 10
SUBJECT_NAMES = {"clinical_medicine": "临床医学", "basic_medicine": "基础医学", "pharmacology": "药理学",
                 "physician": "医师资格"}


def take(pool: list[dict | None], count: int, rng: random.Random, spare: list[dict]) -> list[dict]:
    """`count` items of the pool for evaluation; the rest go to `spare` (practice)."""
    items = [it for it in pool if it is not None]
    rng.shuffle(items)
    if len(items) < count:
        raise ValueError(f"MCQ pool has {len(items)} items, need {count}")
    spare += items[count:]
    return items[:count]


def handwritten(subject: str) -> list[dict]:
    return [mi.item(s, q, c, list(w), e) for s, q, c, w, e in HANDWRITTEN_MCQ if s == subject]


def subject_pools(mcq_diseases: list, rng: random.Random, spare: list[dict]) -> dict[str, list[dict]]:
    """45 items per subject, each a fixed mix of question types; leftovers go to `spare`."""
    need = PER_SUBJECT_TEST + PER_SUBJECT_DEV
    with_key = [d for d in mcq_diseases if d.key_test]
    hand_basic, hand_phys = handwritten("basic_medicine"), handwritten("physician")
    flagged = [d for d in mcq_diseases if not d.urgent]
    return {
        "clinical_medicine": take([mi.dept_item(d, rng) for d in mcq_diseases], 15, rng, spare)
        + take([mi.diagnosis_item(d, rng, 3) for d in mcq_diseases], 15, rng, spare)
        + take([mi.key_test_item(d, rng, 3) for d in with_key], need - 30, rng, spare),
        "basic_medicine": hand_basic + take([mi.lab_item(lab, rng) for lab in LABS], need - len(hand_basic), rng, spare),
        "pharmacology": take([mi.class_item(g, rng) for g in DRUGS], 25, rng, spare)
        + take([mi.hallmark_item(g, rng) for g in DRUGS if g.hallmark], need - 25, rng, spare),
        "physician": hand_phys + take([mi.red_flag_item(d, rng) for d in flagged], need - len(hand_phys), rng, spare),
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


PRACTICE_DRAWS = 4  # each practice question drawn this many times, with other distractors and letters


def practice_items(asked: list[dict], medqa_diseases: list, spare: list[dict], rng: random.Random) -> list[dict]:
    """Exam practice: the pools' leftovers plus practice-only question types, each drawn several
    times. Never an evaluation question, never a fact an evaluation item asks about: items about an
    entity are practised only for question types the evaluation does not ask of that entity."""
    questions = {it["question"] for it in asked}
    answers = {it["correct"] for it in asked}
    held = {d.name for d in medqa_diseases}
    makers = [
        (mi.treatment_drug_item, [d for d in DISEASES if d.name not in held]),
        (mi.symptom_item, [d for d in DISEASES if d.name not in held and d.name not in answers]),
    ]
    items = list(spare)
    for _ in range(PRACTICE_DRAWS):
        for maker, entities in makers:
            items += [maker(d, rng) for d in entities]
        items += [dict(it, wrong=rng.sample(_others(it, spare), 3)) for it in spare if len(_others(it, spare)) >= 3]
    seen, out = set(), []
    for it in items:
        if it is None or it["question"] in questions:
            continue
        key = (it["question"], it["correct"], tuple(sorted(it["wrong"])))
        if key not in seen:
            seen.add(key)
            out.append(it)
    rng.shuffle(out)
    return out


def _others(it: dict, pool: list[dict]) -> list[str]:
    """Wrong options for a redrawn item: the wrong options of same-subject, same-stem-kind items."""
    return sorted({w for other in pool if other["subject"] == it["subject"] and other is not it
                   and other["question"][-4:] == it["question"][-4:] for w in [*other["wrong"], other["correct"]]}
                  - {it["correct"]})


def practice_rows(items: list[dict], rng: random.Random) -> list[dict]:
    """Exam practice as SFT conversations in the evaluation's own format (C-Eval's instruction
    with the Chinese subject name, the question block, the letter as the answer); every other one
    opens with a solved demonstration, as the few-shot evaluation does."""
    rows = []
    lettered_items = lettered(items, "ABCD", rng)
    for index, (it, options, answer) in enumerate(lettered_items):
        turns = [(block(it["question"], options), answer)]
        if index % 2 and index > 0:
            demo, demo_options, demo_answer = lettered_items[index - 1]
            turns.insert(0, (block(demo["question"], demo_options), demo_answer))
        head = f"以下是中国关于{SUBJECT_NAMES[it['subject']]}考试的单项选择题，请选出其中的正确答案。\n\n"
        conversation = []
        for number, (question, letter) in enumerate(turns):
            conversation += [{"from": "human", "value": (head if number == 0 else "") + question},
                             {"from": "gpt", "value": letter}]
        rows.append({"conversations": conversation})
    return rows


def block(question: str, options: dict[str, str]) -> str:
    return "\n".join([question] + [f"{letter}. {text}" for letter, text in options.items()]) + "\n答案："


def build() -> dict[str, list[dict]]:
    rng = rng_for("mcq")
    eligible = [d for d in DISEASES if mi.vignette_eligible(d)]
    rng.shuffle(eligible)
    medqa_diseases = eligible[:MEDQA_DIAGNOSIS + 5]
    mcq_diseases = [d for d in DISEASES if d not in medqa_diseases]
    spare: list[dict] = []
    test, dev = [], []
    for pool in subject_pools(mcq_diseases, rng, spare).values():
        rng.shuffle(pool)
        dev += pool[:PER_SUBJECT_DEV]
        test += pool[PER_SUBJECT_DEV:]
    rng.shuffle(test)
    practice = practice_items(test + dev, medqa_diseases, spare, rng_for("mcq-practice"))
    return {
        "eval/mcq.jsonl": ceval_rows(test, rng),
        "eval/mcq_dev.jsonl": ceval_rows(dev, rng),
        "eval/medqa.jsonl": medqa_rows(medqa_diseases, rng),
        "_practice": practice_rows(practice, rng),
    }
