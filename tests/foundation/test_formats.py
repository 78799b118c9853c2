"""Every data format normalises to the same dialogue; bad records name file and line."""

from __future__ import annotations

import json

import pytest

from chimed_ray.data import Keys, read_records, to_messages, to_preference, to_text
from chimed_ray.data.readers import Record
from chimed_ray.utils.files import InputError

EXPECTED = [
    {"role": "user", "content": "头痛怎么办？"},
    {"role": "assistant", "content": "先休息，持续不缓解请就医。"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        ("chimed", {"text": "[human]:头痛怎么办？\n[bot]:先休息，持续不缓解请就医。"}),
        ("sharegpt", {"conversations": [{"from": "human", "value": "头痛怎么办？"}, {"from": "gpt", "value": "先休息，持续不缓解请就医。"}]}),
        ("alpaca", {"instruction": "头痛怎么办？", "input": "", "output": "先休息，持续不缓解请就医。"}),
        ("messages", {"messages": EXPECTED}),
        ("openrlhf", {"input": "头痛怎么办？", "output": "先休息，持续不缓解请就医。"}),
    ],
)
def test_each_format_and_auto_detection(tmp_path, fmt, row):
    path = _write_jsonl(tmp_path / "d.jsonl", [row])
    records, _ = read_records([path])
    assert to_messages(records[0], fmt, Keys()) == EXPECTED
    assert to_messages(records[0], "auto", Keys()) == EXPECTED


def test_multi_turn_chimed_and_alpaca_history():
    text = "[human]:我咳嗽三天了\n[bot]:有发热吗？\n[human]:有，38度\n[bot]:建议查血常规。"
    messages = to_messages(Record({"text": text}, "x:1"), "chimed", Keys())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "有，38度"
    alpaca = {"instruction": "要吃药吗？", "output": "遵医嘱。", "history": [["我咳嗽", "多久了？"]], "system": "你是医生"}
    roles = [m["role"] for m in to_messages(Record(alpaca, "x:2"), "alpaca", Keys())]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_openrlhf_configured_keys_and_chat_messages():
    record = Record({"q": [{"role": "user", "content": "问"}], "a": "答"}, "x:1")
    messages = to_messages(record, "openrlhf", Keys(input_key="q", output_key="a"))
    assert messages == [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]


def test_pretrain_text_from_txt_parquet_csv_and_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("第一段。\n续行。\n\n第二段。\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["甲", "乙"]}), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text\n丙\n", encoding="utf-8")
    datasets.Dataset.from_dict({"text": ["丁"]}).save_to_disk(str(tmp_path / "hf"))
    records, stats = read_records([tmp_path / "a.txt", tmp_path / "b.parquet", tmp_path / "c.csv", tmp_path / "hf"])
    texts = [to_text(r, "auto", Keys()) for r in records]
    assert texts == ["第一段。\n续行。", "第二段。", "甲", "乙", "丙", "丁"]
    assert stats.read == 6
    assert records[1].source.endswith("a.txt:4")
    assert records[4].source.endswith("c.csv:2")


def test_directory_expands_to_sorted_files(tmp_path):
    _write_jsonl(tmp_path / "b.jsonl", [{"text": "二"}])
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "一"}])
    records, _ = read_records([tmp_path])
    assert [r.data["text"] for r in records] == ["一", "二"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "好"}\n\n{"text": 坏}\n[1, 2]\n{"text": "好"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: invalid JSON"):
        read_records([path])
    records, stats = read_records([path], skip_bad_lines=True)
    assert len(records) == 2 and stats.skipped == 2 and stats.read == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"conversations": [{"from": "human", "value": "问"}]}, "must end with an assistant answer"),
        ({"conversations": [{"from": "alien", "value": "问"}]}, "unknown role 'alien'"),
        ({"conversations": [{"role": "user", "content": "问"}]}, "turn 0 needs keys 'from' and 'value'"),
        ({"instruction": "问"}, "missing key 'output'"),
        ({"text": "没有标签"}, None),
    ],
)
def test_wrong_keys_name_the_record(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "x.jsonl", [row])
    records, _ = read_records([path])
    fmt = "chimed" if "text" in row else "auto"
    with pytest.raises(InputError) as info:
        to_messages(records[0], fmt, Keys())
    assert "x.jsonl:1" in str(info.value)
    if message:
        assert message in str(info.value)


def test_missing_paths_and_unsupported_types(tmp_path):
    with pytest.raises(InputError, match="data file not found"):
        read_records([tmp_path / "nope.jsonl"])
    (tmp_path / "x.docx").write_text("?", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported data file type"):
        read_records([tmp_path / "x.docx"])


def test_preference_formats():
    keys = Keys()
    plain = to_preference(Record({"prompt": "问", "chosen": "好", "rejected": "坏"}, "p:1"), keys)
    assert plain.prompt == [{"role": "user", "content": "问"}] and plain.chosen == "好"
    medicalgpt = {"conversations": [{"from": "human", "value": "问"}], "chosen": "好", "rejected": "坏"}
    assert to_preference(Record(medicalgpt, "p:2"), keys).prompt == plain.prompt
    openrlhf = {
        "chosen": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "好"}],
        "rejected": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "坏"}],
    }
    pair = to_preference(Record(openrlhf, "p:3"), keys)
    assert (pair.prompt, pair.chosen, pair.rejected) == (plain.prompt, "好", "坏")
    with pytest.raises(InputError, match="p:4: missing key 'rejected'"):
        to_preference(Record({"prompt": "问", "chosen": "好"}, "p:4"), keys)
