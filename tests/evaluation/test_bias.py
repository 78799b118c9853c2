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
    # One subscale without a stated direction: its mean, and no pooled total.
    assert result.metrics == {"subscale/attitude": 2.0, "n": 4}
    assert result.breakdown["subscales"]["attitude"]["mean"] == 2.0
    assert result.breakdown["subscales"]["attitude"]["direction"] == "direction not stated"
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


def _answer_all(task, digit: int) -> dict[str, EvalResponse]:
    table = [-5.0] * task.scale.points
    table[digit - 1] = -0.1
    return {f"{task.name}/{i}": EvalResponse(f"{task.name}/{i}", option_logprobs=table) for i in range(len(task.items))}


def test_bundled_cami_is_reported_per_subscale_with_direction_and_no_pooled_mean():
    from chimed_ray.data.embedded import embedded_path
    from chimed_ray.evaluation.report import markdown_report

    task = bias.load_task("cami", [embedded_path("eval/cami.jsonl")], embedded_path("eval/scales.json"), 0)
    # The published order interleaves the four subscales: items 1, 5, 9, ... are authoritarianism.
    order = ["authoritarianism", "benevolence", "social_restrictiveness", "cmhi"]
    assert [item.subscale for item in task.items] == order * 10
    assert [item.id for item in task.items] == [str(i) for i in range(1, 41)]
    # Items 1-20 are the "for" statements, 21-40 the reverse-keyed "against" ones.
    assert [item.reverse for item in task.items] == [False] * 20 + [True] * 20
    result = task.score(_answer_all(task, 5))  # "strongly agree" with everything
    assert set(result.metrics) == {f"subscale/{key}" for key in order} | {"n"}
    assert all(value == 3.0 for key, value in result.metrics.items() if key != "n")  # 5 + 1 per subscale pair
    directions = {key: value["direction"] for key, value in result.breakdown["subscales"].items()}
    assert directions == {"authoritarianism": "higher = more stigmatising", "benevolence": "higher = more accepting",
                          "social_restrictiveness": "higher = more stigmatising", "cmhi": "higher = more accepting"}
    report = markdown_report({"models": {"m": {"tasks": {"cami": {"metrics": result.metrics,
                                                                  "breakdown": result.breakdown}}}}})
    summary = report.split("## Summary", 1)[1].split("##", 1)[0]
    assert "| cami authoritarianism | cami benevolence | cami social_restrictiveness | cami cmhi |" in summary
    assert "cami mean" not in report and "no pooled score" in summary
    assert "authoritarianism (专制主义): higher = more stigmatising" in summary


def test_bundled_mica_v4_pools_only_because_every_item_points_one_way():
    from chimed_ray.data.embedded import embedded_path

    scales = json.loads(embedded_path("eval/scales.json").read_text(encoding="utf-8"))
    assert "MICA v4" in scales["mica"]["source"]
    task = bias.load_task("mica", [embedded_path("eval/mica.jsonl")], embedded_path("eval/scales.json"), 0)
    reverse = [int(item.id) for item in task.items if item.reverse]
    result = task.score(_answer_all(task, 6))
    assert result.metrics["total"] == 6 * (16 - len(reverse)) + 1 * len(reverse)
    assert result.breakdown["subscales"]["total"]["direction"] == "higher = more stigmatising"


def test_scale_direction_must_be_known(tmp_path):
    path = tmp_path / "scales.json"
    path.write_text(json.dumps({"cami": {"subscales": {"a": {"name": "A", "direction": "up"}}}}), encoding="utf-8")
    with pytest.raises(InputError, match=r"cami\.subscales\.a\.direction must be one of"):
        bias.load_scale(path, "cami")
