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


def test_pipeline_from_corpus_to_served_model(ray_cluster, tmp_path, capsys):
    pipeline = load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}"])
    run_pipeline(pipeline)
    out = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward", "rejection_sampling"):
        assert is_hf_checkpoint(tmp_path / stage / "final"), stage
    report = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"base", "sft", "rlhf"}
    assert (tmp_path / "eval" / "report.md").is_file()
    assert list((tmp_path / "eval").glob("*.png"))
    assert "[chimed-ray pipeline] endpoint: http://" in out
    answer = next(line for line in out.splitlines() if "[chimed-ray pipeline] answer:" in line)
    assert answer.split("answer:", 1)[1].strip(), "the served model returned an empty answer"

    # Rerunning the same command skips every finished stage.
    run_pipeline(load_config(PipelineConfig, CONFIG, [f"output_dir={tmp_path}", "stages=[pretrain,sft,reward,rlhf,eval]"]))
    rerun = capsys.readouterr().out
    assert rerun.count("done already") == 5
