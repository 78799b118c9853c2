"""Configs of the Ray Train stages: continued pretraining and supervised fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

from chimed_ray.config.common import DataConfig, LoggingConfig, ModelConfig, OptimConfig, ScaleConfig
from chimed_ray.config.loader import check


@dataclass
class FaultConfig:
    """Fault injection for testing recovery: worker `rank` kills its own process right after the
    checkpoint of step `kill_at_step`, once (a `marker` file records that it happened)."""

    kill_at_step: int = 0
    rank: int = 0
    marker: str = ""

    def validate(self) -> None:
        check(self.kill_at_step >= 0, "kill_at_step", "must be >= 0 (0 disables)")
        check(not self.kill_at_step or bool(self.marker), "marker", "is required with kill_at_step")


@dataclass
class TrainStageConfig:
    """Fields every Ray Train stage has. `output_dir` receives `final/` (an HF checkpoint), logs and
    plots; `storage_path` (default `<output_dir>/ray`) holds Ray Train's checkpoints and may be a
    cloud URI such as `s3://bucket/run`."""

    output_dir: str = "outputs/run"
    resume: bool = False
    storage_path: str = ""
    run_name: str = "train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def validate(self) -> None:
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(bool(self.run_name) and "/" not in self.run_name, "run_name", "must be a plain name")


@dataclass
class PretrainConfig(TrainStageConfig):
    """Continued pretraining: documents are tokenized, joined with EOS and packed into
    `data.max_length` blocks; every token is a target."""

    output_dir: str = "outputs/pretrain"
    run_name: str = "pretrain"


@dataclass
class SFTConfig(TrainStageConfig):
    """Supervised fine-tuning on `[human]:...\\n[bot]:...` dialogues with loss on answers only."""

    output_dir: str = "outputs/sft"
    run_name: str = "sft"
    train_on_prompt: bool = False
    # Lay conversations end to end in `data.max_length` bins (no padding; attention and loss stay
    # inside each conversation); `optim.micro_batch_size` then counts bins.
    packing: bool = False
