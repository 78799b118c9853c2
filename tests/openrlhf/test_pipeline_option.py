"""`chimed-ray pipeline rlhf=openrlhf_ppo`: the PPO stage's config goes to OpenRLHF, and a config it
cannot run is refused while planning, before the first stage starts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def planned(tmp_path, *overrides: str):
    from chimed_ray.config import load_config
    from chimed_ray.config.pipeline import PipelineConfig
    from chimed_ray.pipeline import plan

    pipeline = load_config(PipelineConfig, REPO / "configs" / "pipeline" / "tiny.yaml",
                           [f"output_dir={tmp_path}", "rlhf=openrlhf_ppo", *overrides])
    return {step.name: step for step in plan(pipeline)}


def test_openrlhf_ppo_runs_the_ppo_config_on_openrlhf(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    steps = planned(tmp_path, "overrides.ppo=[scale.use_gpu=true]")
    rlhf = steps["rlhf"]
    assert rlhf.config.engine == "openrlhf" and rlhf.output == tmp_path / "openrlhf_ppo"
    assert rlhf.config.model.path == str(tmp_path / "sft" / "final")
    assert steps["serve"].output == tmp_path / "openrlhf_ppo" / "final"


def test_a_ppo_config_openrlhf_cannot_run_is_refused_while_planning(tmp_path, monkeypatch):
    from chimed_ray.config import ConfigError

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="^scale.use_gpu: False has no OpenRLHF"):
        planned(tmp_path)  # configs/ppo/tiny.yaml is a CPU config
