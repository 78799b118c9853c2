"""CAMI/MICA: reverse keying on a hand-made answer sheet, option choice from fixed log-probabilities."""

from __future__ import annotations

import json

import pytest

from chimed_ray.evaluation import bias
from chimed_ray.evaluation.records import EvalResponse
from chimed_ray.utils.files import InputError


def test_item_score_reverse_keying():
    assert [bias.item_score(a, 5, False) for a in range(1, 6)] == [1, 2, 3, 4, 5]
    assert [bias.item_score(a, 5, True) for a in range(1, 6)] == [5, 4, 3, 2, 1]
    assert bias.item_score(2, 6, True) == 5
    with pytest.raises(ValueError):
        bias.item_score(6, 5, False)


def test_summary_on_hand_made_answer_sheet():
    items = [
        bias.ScaleItem("1", "A", False, "s1"),
        bias.ScaleItem("2", "A", True, "s2"),
        bias.ScaleItem("3", "B", False, "s3"),
        bias.ScaleItem("4", "B", True, "s4"),
        bias.ScaleItem("5", "B", True, "s5"),
    ]
    answers = [2, 1, 5, 4, 3]
    # Scores: 2, 5+1-1=5, 5, 5+1-4=2, 5+1-3=3 -> A: 7 (mean 3.5), B: 10 (mean 10/3), total 17.
    summary = bias.summarize(items, answers, points=5)
    assert summary["item_scores"] == [2, 5, 5, 2, 3]
    assert (summary["total"], summary["mean"], summary["n"]) == (17, pytest.approx(3.4), 5)
    assert summary["subscales"]["A"] == {"total": 7, "mean": 3.5, "n": 2}
    assert summary["subscales"]["B"] == {"total": 10, "mean": pytest.approx(10 / 3), "n": 3}


def test_scale_task_picks_digit_by_logprob(eval_files):
    task = bias.load_task("mica", [eval_files["mica"]], eval_files["scales"], max_items=0)
    requests = task.requests()
    assert requests[0].options == ["1", "2", "3", "4", "5", "6"]
    prompt = requests[0].messages[0]["content"]
    assert prompt.startswith("假设你是一名医生") and "6. 非常不同意" in prompt
    tables = [
        [-3, -0.1, -2, -2, -4, -5],  # answer 2, forward  -> 2
        [-3, -2, -2, -2, -4, -0.3],  # answer 6, reversed -> 1
        [-0.2, -2, -2, -2, -4, -5],  # answer 1, forward  -> 1
        [-3, -2, -0.4, -2, -4, -5],  # answer 3, reversed -> 4
    ]
    result = task.score({f"mica/{i}": EvalResponse(f"mica/{i}", option_logprobs=t) for i, t in enumerate(tables)})
    assert [row["answer"] for row in result.predictions] == [2, 6, 1, 3]
    assert [row["score"] for row in result.predictions] == [2, 1, 1, 4]
    assert result.metrics == {"total": 8, "mean": 2.0, "n": 4}
    assert result.breakdown["subscales"]["attitude"]["mean"] == 2.0
    assert result.breakdown["answers"]["非常同意"] == 1 and result.breakdown["answers"]["同意"] == 1


def test_max_items_samples_every_subscale(tmp_path):
    # Items grouped by subscale, as in the bundled CAMI: the first 4 would all be subscale A.
    rows = [{"id": i, "subscale": "A" if i < 6 else "B", "reverse": False, "text": f"t{i}"} for i in range(12)]
    path = tmp_path / "grouped.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = bias.load_task("cami", [path], None, max_items=4)
    assert [item.id for item in task.items] == ["0", "3", "6", "9"]


def test_scale_metadata_and_errors(eval_files, tmp_path):
    cami = bias.load_scale(eval_files["scales"], "cami")
    assert (cami.points, cami.subscale_names["benevolence"]) == (5, "仁慈")
    assert bias.load_scale(None, "mica").labels == bias.DEFAULT_LABELS[6]
    with pytest.raises(InputError, match="no entry for scale 'other'"):
        bias.load_scale(eval_files["scales"], "other")
    bad = tmp_path / "cami.jsonl"
    bad.write_text('{"id": 1, "reverse": "yes", "text": "t"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"cami\.jsonl:1: field 'reverse' should be true/false"):
        bias.load_task("cami", [bad], None, 0)
