"""QA and dialogue: record parsing, prompt context, and scores from fixed generations."""

from __future__ import annotations

import pytest

from chimed_ray.evaluation import generation
from chimed_ray.evaluation.metrics import bleu_scores, rouge_scores
from chimed_ray.evaluation.records import EvalResponse
from chimed_ray.utils.files import InputError


def test_dialogue_context_ends_before_last_gpt_turn(eval_files):
    task = generation.load_task("dialogue", [eval_files["dialogue"]], max_new_tokens=16, max_items=0)
    (item,) = task.items
    assert [m["role"] for m in item.messages] == ["user", "assistant", "user"]
    assert item.reference == "建议先测量血压，必要时做头部CT。"
    assert task.requests()[0].max_new_tokens == 16 and task.requests()[0].kind == "generate"


def test_dialogue_without_reference_is_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"conversations": [{"from": "human", "value": "你好"}]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.jsonl:1: a dialogue needs a human turn followed by a gpt turn"):
        generation.load_task("dialogue", [path], 8, 0)


def test_clean_generation_cuts_next_human_turn():
    assert generation.clean_generation(" 多喝水。\n[human]:谢谢\n[bot]:不客气") == "多喝水。"


def test_qa_scores_equal_metric_functions(eval_files):
    task = generation.load_task("qa", [eval_files["qa"]], max_new_tokens=16, max_items=0)
    outputs = ["多休息，多喝水。[human]:好的", "低盐饮食，按时服药。"]
    result = task.score({f"qa/{i}": EvalResponse(f"qa/{i}", text=t) for i, t in enumerate(outputs)})
    hyps = ["多休息，多喝水。", "低盐饮食，按时服药。"]
    refs = [item.reference for item in task.items]
    assert result.metrics == {**bleu_scores(hyps, refs), **rouge_scores(hyps, refs), "n": 2}
    assert result.predictions[0]["generation"] == "多休息，多喝水。"
