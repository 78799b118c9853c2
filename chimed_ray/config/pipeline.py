"""Config of the `pipeline` stage: which stage configs to chain, and how to finish serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chimed_ray.config.loader import check

PIPELINE_STAGES = ("pretrain", "sft", "reward", "rlhf", "eval", "serve")


@dataclass
class StageFiles:
    """The YAML of each stage. The pipeline overrides only what wires stages together (output
    directories and the checkpoint each stage starts from); everything else is the stage's own."""

    pretrain: str = "configs/pretrain/tiny.yaml"
    sft: str = "configs/sft/tiny.yaml"
    reward: str = "configs/reward/tiny.yaml"
    ppo: str = "configs/ppo/tiny.yaml"
    rejection_sampling: str = "configs/rejection_sampling/tiny.yaml"
    eval: str = "configs/eval/tiny.yaml"
    serve: str = "configs/serve/tiny.yaml"


@dataclass
class PipelineServeConfig:
    """The last step: serve the final checkpoint, ask it one medical question, then either keep
    serving (`keep_alive: true`, until Ctrl-C) or shut down so the command exits."""

    keep_alive: bool = False
    question: str = "我最近经常头痛，还有点恶心，应该怎么办？"
    max_tokens: int = 64


@dataclass
class PipelineConfig:
    """PT -> SFT -> RM -> RLHF -> eval -> serve. Each stage writes `<output_dir>/<stage>/`; a stage
    whose output exists is skipped unless `force: true`, and an interrupted Ray Train stage resumes
    from its last checkpoint, so rerunning the same command continues where it stopped."""

    output_dir: str = "outputs/pipeline"
    force: bool = False
    rlhf: Literal["rejection_sampling", "ppo", "openrlhf_ppo"] = "rejection_sampling"  # openrlhf_ppo: PPO on OpenRLHF (GPUs)
    stages: list[str] = field(default_factory=lambda: list(PIPELINE_STAGES))
    configs: StageFiles = field(default_factory=StageFiles)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    serve: PipelineServeConfig = field(default_factory=PipelineServeConfig)

    def validate(self) -> None:
        for stage in self.stages:
            check(stage in PIPELINE_STAGES, "stages", f"unknown stage {stage!r} (choose from {list(PIPELINE_STAGES)})")
        known = set(PIPELINE_STAGES) | {"ppo", "rejection_sampling"}
        for stage in self.overrides:
            check(stage in known, f"overrides.{stage}", f"unknown stage (choose from {sorted(known)})")
