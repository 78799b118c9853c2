"""NER: CCKS-2019 records, forgiving parsing of `类型：实体` lines, F1 counted by hand."""

from __future__ import annotations

import pytest

from chimed_ray.evaluation import ner
from chimed_ray.evaluation.records import EvalResponse
from chimed_ray.utils.files import InputError

TYPES = list(ner.CCKS_TYPES)


def test_ccks_positions_are_end_exclusive(eval_files):
    task = ner.load_task([eval_files["ner"]], max_new_tokens=32, max_items=0)
    assert task.docs[0].entities == {("胃癌", "疾病和诊断"), ("CT", "影像检查")}
    assert task.docs[1].entities == {("奥美拉唑", "药物"), ("腹部", "解剖部位")}
    prompt = task.requests()[0].messages[0]["content"]
    assert "类型：实体" in prompt and prompt.endswith("文本：患者胃癌术后，行CT检查。")
    # CCKS-2019's six categories, in its order, whatever subset the file happens to use.
    assert "实体类型包括：疾病和诊断、影像检查、实验室检验、手术、药物、解剖部位。" in prompt


def test_bundled_ner_uses_exactly_the_ccks_2019_categories():
    from chimed_ray.data.embedded import embedded_path

    task = ner.load_task([embedded_path("eval/ner.jsonl")], max_new_tokens=32, max_items=0)
    labels = {label for doc in task.docs for _, label in doc.entities}
    assert labels == set(ner.CCKS_TYPES) == {"疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位"}
    assert ner.entity_types(task.docs) == list(ner.CCKS_TYPES)


def test_out_of_range_entity_names_file_line_and_index(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text('{"originalText": "胃癌", "entities": [{"start_pos": 0, "end_pos": 9, "label_type": "药物"}]}\n',
                    encoding="utf-8")
    with pytest.raises(InputError, match=r"ner\.jsonl:1: entities\[0\]: start_pos/end_pos \(0, 9\) out of range"):
        ner.load_task([path], 8, 0)


def test_parse_entities_is_forgiving():
    output = "\n".join([
        "1. 疾病和诊断：胃癌、胃溃疡",
        "- 影像检查: \u201cCT\u201d",
        "• 药物：奥美拉唑；阿莫西林。",
        "疾病：高血压",  # abbreviated type -> 疾病和诊断
        "腹部：解剖部位",  # written the wrong way round
        "手术：无",
        "这是一段没有冒号的闲聊",
    ])
    assert ner.parse_entities(output, TYPES) == {
        ("胃癌", "疾病和诊断"), ("胃溃疡", "疾病和诊断"), ("CT", "影像检查"), ("奥美拉唑", "药物"),
        ("阿莫西林", "药物"), ("高血压", "疾病和诊断"), ("腹部", "解剖部位"),
    }
    assert ner.parse_entities("无", TYPES) == set()


def test_f1_counted_by_hand(eval_files):
    task = ner.load_task([eval_files["ner"]], max_new_tokens=32, max_items=0)
    outputs = {
        "ner/0": "疾病和诊断：胃癌\n药物：CT",  # 1 TP, 1 FP (CT has the wrong type), 1 FN (CT/影像检查)
        "ner/1": "药物：奥美拉唑\n解剖部位：腹部\n解剖部位：压痛",  # 2 TP, 1 FP
    }
    result = task.score({uid: EvalResponse(uid, text=text) for uid, text in outputs.items()})
    # TP 3, FP 2, FN 1 -> P 3/5, R 3/4, F1 2PR/(P+R) = 2/3.
    assert result.metrics["precision"] == pytest.approx(60.0)
    assert result.metrics["recall"] == pytest.approx(75.0)
    assert result.metrics["f1"] == pytest.approx(100 * 2 / 3)
    assert (result.metrics["tp"], result.metrics["fp"], result.metrics["fn"]) == (3, 2, 1)
    by_type = result.breakdown["by_type"]
    assert by_type["药物"]["precision"] == pytest.approx(50.0) and by_type["药物"]["recall"] == 100.0
    assert by_type["影像检查"]["f1"] == 0.0 and by_type["影像检查"]["support"] == 1
    assert by_type["解剖部位"]["support"] == 1
