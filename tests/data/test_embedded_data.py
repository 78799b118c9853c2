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
NER_LABELS = {"疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位"}  # CCKS-2019
MCQ_SUBJECTS = {"clinical_medicine", "basic_medicine", "pharmacology", "physician"}
CAMI_SUBSCALES = ["authoritarianism", "benevolence", "social_restrictiveness", "cmhi"]
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TRAINING = ("pretrain/train.jsonl", "sft/train.jsonl", "preference/train.jsonl")


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
            exam = row["conversations"][0]["value"].endswith("答案：")
            for turn in row["conversations"][1::2]:
                if exam:  # exam practice is answered with the option letter, as the MCQ eval scores it
                    assert turn["value"] in ("A", "B", "C", "D"), f"{name}:{number}: exam answer {turn['value']!r}"
                else:
                    assert 30 <= len(turn["value"]) <= 200, f"{name}:{number}: answer of {len(turn['value'])} chars"
    exams = [row for row in train if row["conversations"][0]["value"].endswith("答案：")]
    assert 500 <= len(exams) <= 1500, f"{len(exams)} exam-practice conversations"
    single = sum(len(row["conversations"]) == 2 for row in train if row not in exams) / (len(train) - len(exams))
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
    # The published order: the subscales interleave, "for" statements 1-20, "against" 21-40.
    assert [row["subscale"] for row in rows] == CAMI_SUBSCALES * 10
    assert [row["reverse"] for row in rows] == [False] * 20 + [True] * 20
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
    assert list(scales["cami"]["subscales"]) == CAMI_SUBSCALES
    directions = {key: value["direction"] for key, value in scales["cami"]["subscales"].items()}
    assert directions == {"authoritarianism": "stigmatising", "benevolence": "accepting",
                          "social_restrictiveness": "stigmatising", "cmhi": "accepting"}
    assert scales["mica"]["points"] == 6 and len(scales["mica"]["labels"]) == 6
    assert list(scales["mica"]["subscales"]) == ["total"] and "MICA v4" in scales["mica"]["source"]


@pytest.mark.parametrize("name", ["README.md", "eval/scales.json"])
def test_documents_exist(name):
    assert (DATA / name).is_file()


def test_total_size_is_small():
    total = sum(path.stat().st_size for path in DATA.rglob("*") if path.is_file())
    assert total < 3 * 1024 * 1024, f"resources/data is {total} bytes"


def test_preference_pairs_are_length_balanced_with_varied_rejects():
    for name in ("preference/train.jsonl", "preference/eval.jsonl"):
        rows = load(name)
        share = sum(len(row["chosen"]) > len(row["rejected"]) for row in rows) / len(rows)
        assert 0.4 <= share <= 0.6, f"{name}: chosen longer in {share:.0%} of pairs"
    rejected = [row["rejected"] for row in load("preference/train.jsonl")]
    # No handful of stock strings: the most repeated reject appears at most 3 times.
    assert Counter(rejected).most_common(1)[0][1] <= 3


def test_mcq_questions_never_appear_in_training_text():
    corpus = "\n".join(json.dumps(row, ensure_ascii=False) for name in TRAINING for row in load(name))
    for name in ("eval/mcq.jsonl", "eval/mcq_dev.jsonl", "eval/medqa.jsonl"):
        leaked = [row["question"] for row in load(name) if row["question"] in corpus]
        assert not leaked, f"{name}: {len(leaked)} questions in training data, e.g. {leaked[:1]}"


def test_mcq_distractors_share_the_answers_system():
    # A brain-haemorrhage vignette must offer other neurological diagnoses, not hypothyroidism.
    import sys

    sys.path.insert(0, str(SCRIPTS / "embedded_data"))
    from facts import DISEASES

    system = {d.name: d.system for d in DISEASES}
    same = total = 0
    for row in load("eval/medqa.jsonl"):
        answer = row["options"][row["answer"]]
        if answer in system:
            wrong = [text for letter, text in row["options"].items() if letter != row["answer"] and text in system]
            same += sum(system[text] == system[answer] for text in wrong)
            total += len(wrong)
    assert total and same / total >= 0.5, f"only {same} of {total} diagnosis distractors share the answer's system"


def test_text_checker_finds_no_glitch_and_every_emergency_is_triaged():
    import sys

    sys.path.insert(0, str(SCRIPTS / "embedded_data"))
    import check
    from facts import DISEASES

    urgent = tuple(d.name for d in DISEASES if d.urgent)
    files = {path.relative_to(DATA).as_posix(): load(path.relative_to(DATA).as_posix()) for path in DATA.rglob("*.jsonl")}
    problems = check.check_files(files, urgent)
    assert not problems, "\n".join(map(str, problems[:10]))
    corpus = "\n".join(row["text"] for row in load("pretrain/train.jsonl"))
    for glitch in ("出现出现", "检查等检查", "可见排除", "示排除"):
        assert glitch not in corpus


@pytest.mark.parametrize(("text", "kind"), [
    ("如果出现出现自杀或自伤想法，应及时就医。", "doubled phrase"),
    ("可能需要做阴道分泌物检查等检查。", "doubled word around 等"),
    ("血常规可见排除贫血。", "result verb followed by a purpose"),
    ("查体：上腹部压痛，可有反跳痛。", "hedged signs as a patient's findings"),
    ("如果出现一侧肢体无力或口角歪斜，请尽快就医，其他情况按时复诊即可。", "emergency not triaged to 120/急诊"),
    ("急性心肌梗死患者平时要注意低盐饮食，症状加重请及时就医。", "emergency not triaged to 120/急诊"),
])
def test_text_checker_catches_each_glitch(text, kind):
    import sys

    sys.path.insert(0, str(SCRIPTS / "embedded_data"))
    import check

    assert kind in [found for found, _ in check.text_problems(text, ("急性心肌梗死",))]
    fixed = "如果出现一侧肢体无力或口角歪斜，请立即拨打120或到急诊就诊。"
    assert check.text_problems(fixed, ("急性心肌梗死",)) == []


def test_clause_overlap_script_on_the_bundled_sets():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(SCRIPTS / "clause_overlap.py"), "--max", "0.30"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: float(line.split()[2].rstrip("%")) for line in result.stdout.splitlines()[1:3]}
    assert set(rows) == {"qa", "dialogue"} and all(value < 30 for value in rows.values()), result.stdout
