"""Bad input found on the driver, before Ray starts: one line naming the file:line or key, exit 2,
no traceback and no advice to resume (issue 12, items 10, 13, 14, 16, 17, 18, 19).

The CLI runs in-process (`chimed_ray.cli.main`); `RAY_ADDRESS` points nowhere, so a stage that got
as far as Ray would fail with a different line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chimed_ray import cli

REPO = Path(__file__).resolve().parents[2]
DIALOGUE = {"conversations": [{"from": "human", "value": "头痛怎么办"}, {"from": "gpt", "value": "多休息"}]}
pytestmark = pytest.mark.timeout(120)  # today's code reached Ray on some of these and hung


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")


def run(capsys, stage: str, *args: str) -> str:
    """Run the CLI; return its single stderr line after checking the exit code and the shape."""
    code = cli.main([stage, *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"chimed-ray {stage}: error: "), err
    assert "Traceback" not in err and "resume" not in err, err
    return lines[0]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows), encoding="utf-8")
    return path


def sft(tmp_path: Path, tiny_checkpoint: Path, *args: str) -> list[str]:
    return ["--config", REPO / "configs/sft/tiny.yaml", f"output_dir={tmp_path / 'out'}", f"model.path={tiny_checkpoint}", *args]


# --- 13: encodings --------------------------------------------------------------------------------

def test_gbk_yaml_names_the_file_line_and_encoding(tmp_path, capsys):
    config = tmp_path / "gbk.yaml"
    config.write_bytes("output_dir: outputs/x\n# 中文注释：预训练\nrun_name: x\n".encode("gbk"))
    line = run(capsys, "sft", "--config", config)
    assert "gbk.yaml:2" in line and "not UTF-8" in line and "GBK" in line, line


def test_gbk_data_file_names_the_file_line_and_encoding(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "gbk.jsonl"
    good = json.dumps(DIALOGUE, ensure_ascii=False) + "\n"
    data.write_bytes(good.encode("utf-8") * 2 + good.encode("gbk"))
    line = run(capsys, "sft", *sft(tmp_path, tiny_checkpoint, f"data.train_files={data}"))
    assert "gbk.jsonl:3" in line and "not UTF-8" in line and "GBK" in line, line


# --- 14 and 10: record formats checked on the driver, with file:line -----------------------------

@pytest.mark.parametrize(("row", "expected"), [
    ({"question": "头痛", "reply": "休息"}, "cannot tell the format from keys ['question', 'reply']"),
    ({"instruction": "头痛怎么办", "output": "休息", "history": [["只有问题"]]}, "history[0] should be a [question, answer] pair"),
    ({"instruction": "头痛怎么办", "output": "休息", "history": "昨天也头痛"}, "'history' should be a list"),
    ({"conversations": 5}, "key 'conversations' should be list, got int"),
    ({"conversations": [{"from": "gpt", "value": "你好"}]}, "turn 0 should be user"),
])
def test_malformed_record_names_file_and_line(tmp_path, tiny_checkpoint, capsys, row, expected):
    data = jsonl(tmp_path / "mixed.jsonl", [DIALOGUE] * 40 + [row] + [DIALOGUE] * 3)
    line = run(capsys, "sft", *sft(tmp_path, tiny_checkpoint, f"data.train_files={data}"))
    assert "mixed.jsonl:41" in line and expected in line, line


def test_skip_bad_lines_also_skips_and_counts_format_errors(tmp_path, capsys):
    from chimed_ray.config import DataConfig
    from chimed_ray.data import load_split

    rows = [DIALOGUE, {"question": "?"}, "{torn", DIALOGUE, {"instruction": "q", "output": "a", "history": [[1]]}]
    data = DataConfig(train_files=[str(jsonl(tmp_path / "d.jsonl", rows))], skip_bad_lines=True)
    train, _ = load_split(data, "sft")
    assert [record.source.rsplit(":", 1)[1] for record in train] == ["1", "4"]
    assert "skipped 3 malformed records" in capsys.readouterr().out


# --- 16: dataset size against workers x micro-batch, on the driver --------------------------------

def test_too_few_examples_for_the_workers_is_one_line_before_ray(tmp_path, tiny_checkpoint, capsys):
    data = jsonl(tmp_path / "ten.jsonl", [DIALOGUE] * 10)
    line = run(capsys, "sft", *sft(tmp_path, tiny_checkpoint, f"data.train_files={data}"))
    assert "10 training examples are too few for 2 workers x micro_batch_size 8" in line, line


# --- 17: numbers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-.inf", ".nan", "1e999"])
def test_non_finite_learning_rate_is_refused(tmp_path, tiny_checkpoint, capsys, value):
    line = run(capsys, "sft", *sft(tmp_path, tiny_checkpoint, f"optim.lr={value}"))
    assert "optim.lr" in line and "finite" in line, line


def test_integers_never_go_through_float():
    from chimed_ray.config import SFTConfig, load_config

    seed = 2**60 + 1
    config = load_config(SFTConfig, REPO / "configs/sft/tiny.yaml", [f"optim.seed={seed}"])
    assert config.optim.seed == seed
    assert load_config(SFTConfig, None, ["optim.seed='1152921504606846977'"]).optim.seed == seed
    assert load_config(SFTConfig, None, ["optim.max_steps=1e3"]).optim.max_steps == 1000


# --- 18: a stage run before its inputs exist ---------------------------------------------------------

@pytest.mark.parametrize(("stage", "config", "extra", "producer"), [
    ("sft", "sft/tiny.yaml", [], "chimed-ray pretrain --config {configs}/pretrain/tiny.yaml` first, or set model.path="),
    ("reward", "reward/tiny.yaml", [], "chimed-ray sft --config {configs}/sft/tiny.yaml` first, or set model.path="),
    ("ppo", "ppo/tiny.yaml", [], "chimed-ray sft --config {configs}/sft/tiny.yaml` first, or set model.path="),
    ("ppo", "ppo/tiny.yaml", ["model.path={model}"], "chimed-ray reward --config {configs}/reward/tiny.yaml` first, or set reward.path="),
    ("rejection-sampling", "rejection_sampling/tiny.yaml", [], "chimed-ray sft --config {configs}/sft/tiny.yaml` first"),
])
def test_missing_checkpoint_names_the_stage_that_makes_it(tmp_path, tiny_checkpoint, capsys, monkeypatch, stage, config, extra, producer):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no outputs/ yet
    (tmp_path / "configs").symlink_to(REPO / "configs")
    args = ["--config", f"configs/{config}", f"output_dir={tmp_path / 'out'}", *(a.format(model=tiny_checkpoint) for a in extra)]
    line = run(capsys, stage, *args)
    assert "model checkpoint directory not found" in line, line
    assert producer.format(configs="configs") in line, line


# --- 19: safetensors only -----------------------------------------------------------------------------

def test_pickle_weights_are_refused(tmp_path, tiny_checkpoint, capsys):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    torch.save(load_file(tiny_checkpoint / "model.safetensors"), pickled / "pytorch_model.bin")
    line = run(capsys, "sft", *sft(tmp_path, tiny_checkpoint)[:-1], f"model.path={pickled}")
    assert "model.path" in line and "*.bin" in line and "safetensors only" in line, line


def test_loading_asks_transformers_for_safetensors(tiny_checkpoint, monkeypatch):
    from transformers import AutoModelForCausalLM

    from chimed_ray.models import load_causal_lm

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(tiny_checkpoint)
    assert seen.get("use_safetensors") is True


@pytest.mark.parametrize("extra", [{}, {"eval_fraction": 0.25}, {"max_samples": 7}, {"skip_bad_lines": True}])
def test_driver_count_matches_what_the_workers_train_on(tmp_path, extra):
    from chimed_ray.config import DataConfig
    from chimed_ray.data import load_split
    from chimed_ray.data.splits import check_split

    rows = [DIALOGUE] * 12 + [{"question": "?"}] * (1 if extra.get("skip_bad_lines") else 0)
    data = DataConfig(train_files=[str(jsonl(tmp_path / "d.jsonl", rows))], **extra)
    assert check_split(data, "sft") == len(load_split(data, "sft")[0])
