"""Config sections shared by every stage: model, data, optimisation, scaling, logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chimed_ray.config.loader import ConfigError, check

DATA_FORMATS = ("auto", "text", "chimed", "sharegpt", "alpaca", "messages", "openrlhf", "preference")


@dataclass
class TinyModelConfig:
    """Shape of a model built from scratch (the embedded default), LLaMA- or Qwen2-style."""

    architecture: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        check(self.hidden_size > 0, "hidden_size", "must be positive")
        check(self.num_hidden_layers > 0, "num_hidden_layers", "must be positive")
        check(self.num_attention_heads > 0, "num_attention_heads", "must be positive")
        check(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
        )
        check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"{self.num_key_value_heads} must divide num_attention_heads={self.num_attention_heads}",
        )


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft) on the attention and MLP projections; the base weights stay frozen.

    `alpha / rank` scales the adapter's update. With `merge_on_save` every saved checkpoint is a
    full HF model with the adapter merged in (for serving), plus the adapter alone in `adapter/`.
    """

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_on_save: bool = True

    def validate(self) -> None:
        check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        check(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(bool(self.target_modules), "target_modules", "must name at least one module, e.g. q_proj")


@dataclass
class ModelConfig:
    """Where the model and tokenizer come from.

    `path` is a local HF checkpoint directory (safetensors). When it is empty the model is built from
    `tiny` with the tokenizer at `tokenizer_path` (empty: the tokenizer trained on the bundled corpus).
    """

    path: str = ""
    tokenizer_path: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class DataConfig:
    """Training and held-out data: local files, directories, parquet or saved HF datasets.

    `train_files` empty means the bundled embedded default for the stage.
    """

    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    format: str = "auto"
    input_key: str = "input"
    output_key: str = "output"
    messages_key: str = "messages"
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    max_length: int = 512
    eval_fraction: float = 0.0
    skip_bad_lines: bool = False
    max_samples: int = 0

    def validate(self) -> None:
        check(self.format in DATA_FORMATS, "format", f"expected one of {list(DATA_FORMATS)}, got {self.format!r}")
        check(self.max_length >= 8, "max_length", f"must be at least 8, got {self.max_length}")
        check(0.0 <= self.eval_fraction < 1.0, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        check(self.max_samples >= 0, "max_samples", "must be >= 0 (0 means all)")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, gradient accumulation and clipping."""

    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_ratio: float = 0.03
    epochs: int = 1
    max_steps: int = 0
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 42

    def validate(self) -> None:
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        check(len(self.betas) == 2, "betas", f"expected two numbers, got {self.betas}")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.max_steps >= 0, "max_steps", "must be >= 0 (0 means epochs decide)")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 disables clipping)")


@dataclass
class ScaleConfig:
    """How many Ray Train workers, on which devices, with which DeepSpeed ZeRO setup."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    max_failures: int = 0
    check_cluster: bool = True
    gpu_memory_gb: float = 80.0  # per GPU, for the memory plan (`chimed-ray plan`)
    memory_check: bool = True  # refuse, before any actor starts, a config the memory plan says cannot fit

    def validate(self) -> None:
        check(self.num_workers >= 1, "num_workers", f"must be >= 1, got {self.num_workers}")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be positive")
        check(self.gpus_per_worker > 0, "gpus_per_worker", "must be positive")
        check(
            not self.offload_params or self.zero_stage == 3,
            "offload_params",
            "parameter offload needs zero_stage=3",
        )
        check(
            not self.offload_optimizer or self.zero_stage >= 1,
            "offload_optimizer",
            "optimizer offload needs zero_stage >= 1",
        )
        check(
            self.use_gpu or self.precision in ("auto", "fp32"),
            "precision",
            f"{self.precision} needs use_gpu=true; CPU training runs in fp32",
        )
        check(self.max_failures >= -1, "max_failures", "must be >= -1 (-1 retries forever)")
        check(self.gpu_memory_gb > 0, "gpu_memory_gb", f"must be positive, got {self.gpu_memory_gb}")

    def resolved_precision(self) -> str:
        """bf16 on GPU and fp32 on CPU unless set explicitly."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.use_gpu else "fp32"


@dataclass
class LoggingConfig:
    """How often to log, evaluate and checkpoint (in optimizer steps)."""

    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress_bar: bool = True

    def validate(self) -> None:
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.eval_every >= 0, "eval_every", "must be >= 0 (0: only at the end)")
        check(self.save_every >= 0, "save_every", "must be >= 0 (0: only at the end)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")


def check_resources(key: str, count: int, unit: str, cpus_each: float, gpus_each: float) -> None:
    """Fail early, naming `key`, if the running Ray cluster cannot hold `count` workers (or actors)
    of `cpus_each` CPUs and `gpus_each` GPUs."""
    import ray

    total = ray.cluster_resources()
    for resource, each in (("CPU", cpus_each), ("GPU", gpus_each)):
        if each > 0 and total.get(resource, 0) < count * each:
            raise ConfigError(
                f"{key}: {count} {unit} x {each:g} {resource}s need {count * each:g} {resource}s, "
                f"the Ray cluster has {total.get(resource, 0):g}"
            )


def check_cluster_fits(scale: ScaleConfig) -> None:
    """Fail early if the running Ray cluster cannot hold the requested Ray Train workers."""
    gpus = scale.gpus_per_worker if scale.use_gpu else 0.0
    check_resources("scale.num_workers", scale.num_workers, "workers", scale.cpus_per_worker, gpus)


__all__ = [
    "ConfigError",
    "DataConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ScaleConfig",
    "TinyModelConfig",
    "check_cluster_fits",
    "check_resources",
]
