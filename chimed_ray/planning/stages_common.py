"""Small pieces every stage's plan uses: fractional GPUs, the ZeRO setup, LoRA's shape."""

from __future__ import annotations

from typing import Any

from chimed_ray.planning.memory import ZeroSetup
from chimed_ray.planning.roles import LoRAShape


def workers_per_device(gpus_per_worker: float, num_workers: int) -> int:
    """Workers of one role that Ray packs onto one GPU (fractional GPUs)."""
    return max(1, min(num_workers, int(1 / gpus_per_worker + 1e-9))) if gpus_per_worker < 1 else 1


def lora_shape(model_config: Any) -> LoRAShape | None:
    lora = model_config.lora
    return LoRAShape(lora.rank, tuple(lora.target_modules), lora.dropout) if lora.enabled else None


def zero_setup(scale: Any, num_workers: int, precision: str) -> ZeroSetup:
    return ZeroSetup(scale.zero_stage, num_workers, scale.offload_optimizer, scale.offload_params,
                     mixed_precision=precision != "fp32")
