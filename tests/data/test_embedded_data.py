"""The bundled default datasets: counts, sizes, formats, exact NER spans and leak-free splits.

Reads the files under chimed_ray/resources/data only (stdlib + pytest); regenerate them with
`python scripts/embedded_data/build.py`.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "chimed_ray" / "resources" / "data"
NER_LABELS = {"疾病和诊断", "检查", "检验", "手术", "药物", "解剖部位"}
MCQ_SUBJECTS = {"clinical_medicine", "basic_medicine", "pharmacology", "physician"}
CAMI_SUBSCALES = ["authoritarianism", "benevolence", "social_restrictiveness", "cmhi"]


@cache
def load(name: str) -> list[dict]:
    rows = []
    with open(DATA / name, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            assert line.strip(), f"{name}:{number}: empty line"
            rows.append(json.loads(line))
    return rows


def human_turns(rows: list[dict]) -> set[str]:
    return {turn["value"] for row in rows for turn in row["conversations"] if turn["from"] == "human"}


def check_conversation(row: dict, where: str) -> None:
    turns = row["conversations"]
    assert len(turns) >= 2 and len(turns) % 2 == 0, f"{where}: {len(turns)} turns"
    for index, turn in enumerate(turns):
        assert turn["from"] == ("human" if index % 2 == 0 else "gpt"), f"{where}: turn {index} is {turn['from']}"
        assert turn["value"].strip(), f"{where}: turn {index} is empty"


def test_pretrain_sizes_and_split():
    train, evaluation = load("pretrain/train.jsonl"), load("pretrain/eval.jsonl")
    train_bytes = (DATA / "pretrain/train.jsonl").stat().st_size
    assert train_bytes >= 320 * 1024, f"pretrain/train.jsonl is {train_bytes} bytes, want >= 320 KiB"
    assert all(isinstance(row["text"], str) and len(row["text"]) > 50 for row in train + evaluation)
    share = len(evaluation) / (len(train) + len(evaluation))
    assert 0.04 <= share <= 0.11, f"pretrain eval share {share:.3f}"
    assert not {row["text"] for row in evaluation} & {row["text"] for row in train}


def test_sft_counts_format_and_mix():
    train, evaluation = load("sft/train.jsonl"), load("sft/eval.jsonl")
    assert len(train) >= 1000 and 80 <= len(evaluation) <= 150
    for name, rows in (("sft/train.jsonl", train), ("sft/eval.jsonl", evaluation)):
        for number, row in enumerate(rows, start=1):
            check_conversation(row, f"{name}:{number}")
            assert len(row["conversations"]) <= 8, f"{name}:{number}: more than 4 turns"
            for turn in row["conversations"][1::2]:
                assert 30 <= len(turn["value"]) <= 200, f"{name}:{number}: answer of {len(turn['value'])} chars"
    single = sum(len(row["conversations"]) == 2 for row in train) / len(train)
    assert 0.5 <= single <= 0.7, f"single-turn share {single:.2f}"


def test_sft_eval_and_open_eval_are_disjoint_from_train():
    train = human_turns(load("sft/train.jsonl"))
    for name in ("sft/eval.jsonl", "eval/dialogue.jsonl"):
        leaked = [row["conversations"][0]["value"] for row in load(name) if row["conversations"][0]["value"] in train]
        assert not leaked, f"{name}: {len(leaked)} questions also in sft/train, e.g. {leaked[:2]}"
    leaked = [row["question"] for row in load("eval/qa.jsonl") if row["question"] in train]
    assert not leaked, f"eval/qa.jsonl: questions also in sft/train: {leaked[:2]}"


def test_preference_pairs():
    train, evaluation = load("preference/train.jsonl"), load("preference/eval.jsonl")
    assert 250 <= len(train) <= 350 and 40 <= len(evaluation) <= 80
    for row in train + evaluation:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert all(row[key].strip() for key in row) and row["chosen"] != row["rejected"]
    assert not {row["prompt"] for row in evaluation} & {row["prompt"] for row in train}


def check_mcq_row(row: dict, where: str) -> None:
    assert row["subject"] in MCQ_SUBJECTS, f"{where}: subject {row['subject']!r}"
    options = [row[letter] for letter in "ABCD"]
    assert all(isinstance(option, str) and option for option in options), f"{where}: empty option"
    assert len(set(options)) == 4, f"{where}: duplicate options"
    assert row["answer"] in "ABCD" and len(row["answer"]) == 1 and row["question"] and row["explanation"]


def test_mcq_format_and_balanced_letters():
    rows = load("eval/mcq.jsonl")
    assert len(rows) >= 120
    assert [row["id"] for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        check_mcq_row(row, f"mcq id {row['id']}")
    counts = Counter(row["answer"] for row in rows)
    for letter in "ABCD":
        assert 0.15 <= counts[letter] / len(rows) <= 0.35, f"answer {letter}: {counts[letter]} of {len(rows)}"


def test_mcq_dev_has_five_per_subject_and_is_disjoint():
    dev = load("eval/mcq_dev.jsonl")
    for row in dev:
        check_mcq_row(row, f"mcq_dev id {row['id']}")
    assert Counter(row["subject"] for row in dev) == {subject: 5 for subject in MCQ_SUBJECTS}
    assert {row["subject"] for row in load("eval/mcq.jsonl")} == MCQ_SUBJECTS
    assert not {row["question"] for row in dev} & {row["question"] for row in load("eval/mcq.jsonl")}


def test_medqa_format():
    rows = load("eval/medqa.jsonl")
    assert len(rows) >= 30
    for row in rows:
        assert set(row["options"]) == set("ABCDE") and len(set(row["options"].values())) == 5
        assert row["answer"] in row["options"] and row["question"] and row["meta_info"]
    counts = Counter(row["answer"] for row in rows)
    assert max(counts.values()) / len(rows) <= 0.35


def test_ner_spans_are_exact_and_consistent():
    rows = load("eval/ner.jsonl")
    assert len(rows) >= 120
    label_of: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        text, previous_end = row["originalText"], 0
        assert row["entities"], f"ner:{number}: no entities"
        for entity in sorted(row["entities"], key=lambda e: e["start_pos"]):
            start, end, label = entity["start_pos"], entity["end_pos"], entity["label_type"]
            assert label in NER_LABELS, f"ner:{number}: label {label!r}"
            assert previous_end <= start < end <= len(text), f"ner:{number}: bad span {start}-{end}"
            span = text[start:end]
            assert span == span.strip() and not any(p in span for p in "，。；：“”"), f"ner:{number}: span {span!r}"
            assert label_of.setdefault(span, label) == label, f"ner: {span!r} labelled {label} and {label_of[span]}"
            previous_end = end
    assert {e["label_type"] for row in rows for e in row["entities"]} == NER_LABELS


def test_open_qa_and_dialogue_eval():
    qa = load("eval/qa.jsonl")
    assert len(qa) >= 100 and all(row["question"] and row["answer"] for row in qa)
    dialogues = load("eval/dialogue.jsonl")
    assert len(dialogues) >= 60
    for number, row in enumerate(dialogues, start=1):
        check_conversation(row, f"eval/dialogue.jsonl:{number}")
        assert row["conversations"][-1]["from"] == "gpt"


def test_cami_items_and_scale():
    rows = load("eval/cami.jsonl")
    assert [row["id"] for row in rows] == list(range(1, 41))
    by_subscale = Counter(row["subscale"] for row in rows)
    assert by_subscale == {subscale: 10 for subscale in CAMI_SUBSCALES}
    for subscale in CAMI_SUBSCALES:
        reverse = sum(row["reverse"] for row in rows if row["subscale"] == subscale)
        assert reverse == 5, f"CAMI {subscale}: {reverse} reverse-scored items, want 5"
    assert all(isinstance(row["reverse"], bool) and row["text"] for row in rows)


def test_mica_items_and_scale():
    rows = load("eval/mica.jsonl")
    assert [row["id"] for row in rows] == list(range(1, 17))
    assert {row["id"] for row in rows if row["reverse"]} == {3, 9, 10, 11, 12, 16}
    assert all(row["subscale"] == "total" and row["text"] for row in rows)


def test_scales_json():
    scales = json.loads((DATA / "eval/scales.json").read_text(encoding="utf-8"))
    assert scales["cami"]["points"] == 5 and len(scales["cami"]["labels"]) == 5
    assert scales["cami"]["subscales"] == CAMI_SUBSCALES
    assert scales["mica"]["points"] == 6 and len(scales["mica"]["labels"]) == 6
    assert scales["mica"]["subscales"] == ["total"]


@pytest.mark.parametrize("name", ["README.md", "eval/scales.json"])
def test_documents_exist(name):
    assert (DATA / name).is_file()


def test_total_size_is_small():
    total = sum(path.stat().st_size for path in DATA.rglob("*") if path.is_file())
    assert total < 3 * 1024 * 1024, f"resources/data is {total} bytes"
