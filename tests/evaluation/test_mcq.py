"""MCQ parsing (C-Eval JSONL, CMMLU CSV, MedQA), prompts, and letter scoring on fixed log-probabilities."""

from __future__ import annotations

import pytest

from chimed_ray.evaluation import mcq
from chimed_ray.evaluation.records import EvalResponse
from chimed_ray.utils.files import InputError


def test_reads_ceval_jsonl_cmmlu_csv_and_medqa(eval_files):
    ceval = mcq.load_items([eval_files["mcq"]])
    assert [(i.subject, i.answer, list(i.options)) for i in ceval][0] == ("临床医学", "A", list("ABCD"))
    cmmlu = mcq.load_items([eval_files["cmmlu"]])
    assert [(i.subject, i.question, i.answer) for i in cmmlu] == [
        ("clinical_knowledge", "发热最常见的原因是", "A"), ("clinical_knowledge", "成人正常心率为每分钟", "B")]
    medqa = mcq.load_items([eval_files["medqa"]])
    # The second record is the official layout: answer text plus the letter in answer_idx.
    assert [(i.answer, len(i.options), i.subject) for i in medqa] == [("A", 5, "第一部分"), ("B", 5, "第二部分")]


def test_ceval_csv_subject_from_file_name(tmp_path):
    path = tmp_path / "basic_medicine_val.csv"
    path.write_text("id,question,A,B,C,D,answer,explanation\n0,问题,甲,乙,丙,丁,C,\n", encoding="utf-8")
    (item,) = mcq.load_items([path])
    assert (item.subject, item.answer, item.options["C"]) == ("basic_medicine", "C", "丙")


def test_bad_answer_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "A": "a", "B": "b", "answer": "A"}\n'
                    '{"question": "q", "A": "a", "B": "b", "answer": "E"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: answer 'E' is not one of the options"):
        mcq.load_items([path])


def test_zero_and_few_shot_prompts(eval_files):
    task = mcq.load_task("mcq", [eval_files["mcq"]], [eval_files["mcq_dev"]], few_shot=2, max_items=0)
    zero = mcq.build_messages(task.items[0], [])
    assert zero == [{"role": "user", "content": (
        "以下是中国关于临床医学考试的单项选择题，请选出其中的正确答案。\n\n"
        "高血压患者首选的检查是\nA. 血压测量\nB. 胃镜\nC. 骨密度\nD. 听力测试\n答案：")}]
    requests = task.requests()
    first = requests[0].messages
    # Two demonstrations of the same subject come first, never the question itself.
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant", "user"]
    assert first[0]["content"].startswith("以下是中国关于临床医学") and "糖尿病" in first[0]["content"]
    assert first[1]["content"] == "D"
    assert "高血压" not in first[0]["content"] + first[2]["content"]
    assert requests[0].options == ["A", "B", "C", "D"] and requests[0].kind == "choice"


def test_prompt_names_the_subject_in_chinese(eval_files):
    # C-Eval's template with the Chinese subject name, never the English id.
    assert mcq.instruction("clinical_medicine") == "以下是中国关于临床医学考试的单项选择题，请选出其中的正确答案。"
    assert [mcq.subject_name(s) for s in ("basic_medicine", "physician", "pharmacology", "Clinical_Knowledge")] == [
        "基础医学", "医师资格", "药理学", "临床知识"]
    assert mcq.subject_name("内科学") == "内科学"
    (item, _) = mcq.load_items([eval_files["cmmlu"]])
    assert mcq.build_messages(item, [])[0]["content"].startswith("以下是中国关于临床知识考试的单项选择题")


def test_bundled_mcq_prompts_use_chinese_subject_names():
    from chimed_ray.data.embedded import embedded_path

    task = mcq.load_task("mcq", [embedded_path("eval/mcq.jsonl")], [embedded_path("eval/mcq_dev.jsonl")],
                         few_shot=1, max_items=0)
    heads = {r.messages[0]["content"].split("\n", 1)[0] for r in task.requests()}
    assert heads == {f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。"
                     for name in ("临床医学", "基础医学", "药理学", "医师资格")}
    assert not any(ch.isascii() and ch.isalpha() for head in heads for ch in head)


def test_letter_scoring_on_fixed_logprob_tables(eval_files):
    task = mcq.load_task("mcq", [eval_files["mcq"]], [], few_shot=0, max_items=0)
    tables = {
        "mcq/0": [-0.2, -1.9, -3.0, -2.5],  # picks A: right
        "mcq/1": [-1.1, -0.9, -2.0, -1.0],  # picks B: wrong (D)
        "mcq/2": [-2.0, -0.5, -0.7, -3.0],  # picks B: right
    }
    result = task.score({uid: EvalResponse(uid, option_logprobs=t) for uid, t in tables.items()})
    assert result.metrics == {"accuracy": pytest.approx(200 / 3), "n": 3}
    assert result.breakdown["by_subject"] == {
        "临床医学": {"name": "临床医学", "accuracy": 50.0, "n": 2},
        "基础医学": {"name": "基础医学", "accuracy": 100.0, "n": 1}}
    assert [p["prediction"] for p in result.predictions] == ["A", "B", "B"]


def test_max_items_caps(eval_files):
    assert len(mcq.load_task("mcq", [eval_files["mcq"]], [], 0, max_items=2).items) == 2
