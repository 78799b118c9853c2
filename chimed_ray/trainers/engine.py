"""DeepSpeed set-up shared by every model it wraps (Ray Train stages, PPO's policy and critic, and
frozen roles held as ZeRO-3 inference shards): the ZeRO config, construction already partitioned
under ZeRO-3, AdamW with warmup+cosine, and HF-format saving under any ZeRO stage."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig


def deepspeed_config(optim: "OptimConfig", scale: "ScaleConfig") -> dict[str, Any]:
    """The DeepSpeed JSON config for a ZeRO stage, precision and offload choice."""
    precision = scale.resolved_precision()
    zero: dict[str, Any] = {"stage": scale.zero_stage, "contiguous_gradients": True}
    if scale.use_gpu:
        zero["overlap_comm"] = True
    if scale.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": scale.use_gpu}
    if scale.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": scale.use_gpu}
    if scale.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": optim.micro_batch_size,
        "gradient_accumulation_steps": optim.gradient_accumulation_steps,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        # Our optimizer is torch's AdamW (fused on GPU); DeepSpeed only partitions its state.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def inference_config(precision: str, micro_batch_size: int = 1) -> dict[str, Any]:
    """ZeRO-3 without an optimizer: a frozen model (reference, reward) partitioned over its group,
    each forward gathering one layer at a time."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def is_zero3(config: Optional[dict[str, Any]]) -> bool:
    return bool(config) and config.get("zero_optimization", {}).get("stage") == 3


@contextlib.contextmanager
def sharded_construction(config: Optional[dict[str, Any]]) -> Iterator[None]:
    """Build HF models inside this block already partitioned when `config` is ZeRO-3.

    transformers wraps `from_pretrained`/`from_config` in `deepspeed.zero.Init` while an
    `HfDeepSpeedConfig` is alive (it keeps only a weak reference, so we hold it here): each rank
    then materialises one layer at a time and keeps only its partition, instead of the whole model
    (52 GB in fp32 at 13B) before `deepspeed.initialize` partitions it. Outside ZeRO-3 this does
    nothing. Needs the process group (Ray Train and our actor groups set it up first).
    """
    if not is_zero3(config):
        yield
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    deepspeed.init_distributed(auto_mpi_discovery=False)  # zero.Init would; joins the existing group
    _return_large_frees_to_the_os()
    keep_alive = HfDeepSpeedConfig(config)
    try:
        yield
    finally:
        # Later constructions in this process (e.g. a frozen replica) must not be partitioned.
        unset_hf_deepspeed_config()
        del keep_alive


def _return_large_frees_to_the_os() -> None:
    """On a CPU run the partitions live in host memory. zero.Init frees each full-size weight right
    after partitioning it; glibc's dynamic mmap threshold would otherwise serve later weights from
    the heap, where freed blocks interleaved with kept partitions are never returned to the OS, and
    the process would grow as if it held the whole model. A fixed threshold keeps large blocks in
    mmap (the glibc default before any free raises it). No-op with CUDA or without glibc."""
    import ctypes
    import ctypes.util

    import torch

    if torch.cuda.is_available():
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def initialize_frozen(model: "torch.nn.Module", config: dict[str, Any]):
    """Wrap a frozen, already partitioned model as a ZeRO-3 inference engine (no optimizer): its
    forward gathers and releases each layer's parameters through DeepSpeed's hooks."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
    engine.eval()  # DeepSpeedEngine.eval returns None, not the engine
    return engine


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1, then cosine decay to `min_lr_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: "torch.nn.Module", optim: "OptimConfig", scale: "ScaleConfig", total_steps: int):
    """AdamW over trainable parameters (no decay on biases/norms) and its warmup+cosine schedule."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # DeepSpeed drops empty groups, which would leave the scheduler with one LR too many; LoRA has
    # no trainable norms or biases, so its no-decay group is empty.
    groups = [group for group in groups if group["params"]]
    if scale.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=optim.lr, betas=tuple(optim.betas))
    else:
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), fused=scale.use_gpu)
    warmup = int(optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup, optim.min_lr_ratio)
    )
    return optimizer, scheduler


def initialize(model: "torch.nn.Module", optim: "OptimConfig", scale: "ScaleConfig", total_steps: int):
    """Wrap `model` in a DeepSpeed engine inside an existing process group (Ray sets it up)."""
    import deepspeed

    optimizer, scheduler = make_optimizer(model, optim, scale, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(optim, scale),
        dist_init_required=False,
    )
    return engine


def gathered_state_dict(engine) -> dict[str, "torch.Tensor"] | None:
    """The full model state dict on rank 0 (None elsewhere), gathering ZeRO-3 partitions.

    Every rank must call this: under ZeRO-3 the gather is a collective.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if rank == 0 else None
    if rank != 0:
        return None
    return {name: tensor.detach().cpu() for name, tensor in engine.module.state_dict().items()}
