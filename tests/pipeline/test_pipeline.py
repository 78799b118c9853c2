"""The README's main job: the whole pipeline config on the embedded default, then a rerun that
skips every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chimed_ray.config import ConfigError, load_config
from chimed_ray.config.pipeline import PipelineConfig
from chimed_ray.models import is_hf_checkpoint
from chimed_ray.pipeline import plan, run_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "tiny.yaml"


def test_every_stage_config_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"sft\.yaml|optim\.lr"):
        plan(load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}", "overrides={sft: [optim.lr=-1]}"]))
    with pytest.raises(ConfigError, match="configs.reward: .*config file not found"):
        plan(load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}", "configs.reward=nope.yaml"]))
    with pytest.raises(ConfigError, match="stages: unknown stage 'deploy'"):
        load_config(PipelineConfig, CONFIG, ["stages=[pretrain,deploy]"])
    assert not any(tmp_path.iterdir()), "validation must not write anything"


# The main job shrunk to test size: the same model, fewer steps, one small rejection-sampling round,
# MCQ on all 160 items, the reward task on 12
# held-out prompts and short generations. `make pipeline` runs the full configuration.
SHRINK = ("overrides={pretrain: [model.tiny.hidden_size=192, model.tiny.intermediate_size=512, "
          "model.tiny.num_hidden_layers=4, model.tiny.num_attention_heads=6, model.tiny.num_key_value_heads=2, "
          "data.max_length=256, optim.lr=2e-3, optim.max_steps=20, logging.eval_every=20, logging.save_every=20], "
          "sft: [packing=true, optim.micro_batch_size=2, optim.lr=1e-3, optim.max_steps=30, logging.eval_every=30, "
          "logging.save_every=30], "
          "reward: [optim.max_steps=20, logging.eval_every=20, logging.save_every=20], "
          "rejection_sampling: [rounds=1, samples_per_prompt=2, max_prompts=16, score_final=false, "
          "'data.train_files=[chimed_ray/resources/data/preference/train.jsonl]', sampling.max_new_tokens=16, "
          "sft.optim.lr=1e-4, sft.optim.epochs=1], "
          "eval: ['tasks=[mcq, cami, reward]', max_items=0, generation.max_new_tokens=12]}")


def test_pipeline_from_corpus_to_served_model(ray_cluster, tmp_path, capsys):
    pipeline = load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}", SHRINK])
    run_pipeline(pipeline)
    out = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward", "rejection_sampling"):
        assert is_hf_checkpoint(tmp_path / stage / "final"), stage
    report = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"base", "sft", "rlhf"}
    assert all(isinstance(model["tasks"]["reward"]["metrics"]["reward"], float) for model in report["models"].values())
    summary = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8").split("## Summary", 1)[1]
    assert summary.splitlines()[2].startswith("| model | mcq acc | reward | cami ") and "cami mean" not in summary
    assert (tmp_path / "eval" / "report.md").is_file()
    assert list((tmp_path / "eval").glob("*.png"))
    assert "[chimed-ray pipeline] endpoint: http://" in out
    answer = next(line for line in out.splitlines() if "[chimed-ray pipeline] answer:" in line)
    assert answer.split("answer:", 1)[1].strip(), "the served model returned an empty answer"

    # Rerunning the same command skips every finished stage.
    run_pipeline(load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}", "stages=[pretrain,sft,reward,rlhf,eval]", SHRINK]))
    rerun = capsys.readouterr().out
    assert rerun.count("done already") == 5
