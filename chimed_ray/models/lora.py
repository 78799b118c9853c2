"""LoRA (peft) for every trainable model: wrap a model with adapters, and save a checkpoint as the
adapter alone (`adapter/`) plus, for serving, a full HF model with the adapter merged in.

Merging works on a state dict rather than on the live model, so saving mid-training never
touches the weights being trained and works on the state gathered from ZeRO-3 partitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from chimed_ray.config.common import LoRAConfig

ADAPTER_DIR = "adapter"
# peft's wrapper prefixes every name with this; the merged checkpoint uses the base model's names.
PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"


def apply_lora(
    model: "torch.nn.Module",
    lora: "LoRAConfig",
    modules_to_save: Optional[Sequence[str]] = None,
    task_type: Optional[str] = "CAUSAL_LM",
) -> "torch.nn.Module":
    """Wrap `model` with LoRA adapters on `lora.target_modules`; every other weight is frozen.

    Args:
        model: An HF model (or any module whose linear layers carry the target names).
        lora: The `model.lora` config section.
        modules_to_save: Extra modules trained in full and saved with the adapter (e.g. a reward
            head, `score`).
        task_type: peft task type recorded in `adapter_config.json`; None for custom modules.

    Returns:
        The `peft.PeftModel`; only adapter (and `modules_to_save`) parameters require grad.
    """
    from peft import LoraConfig, get_peft_model

    from chimed_ray.config import ConfigError

    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
        bias="none",
    )
    try:
        wrapped = get_peft_model(model, peft_config)
    except ValueError as exc:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"model.lora.target_modules: {list(lora.target_modules)} do not match {type(model).__name__}'s "
            f"linear layers {linear} ({exc})"
        ) from None
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if checkpointing if checkpointing is not None else getattr(model, "is_gradient_checkpointing", False):
        # Frozen embeddings give checkpointed blocks inputs without grad; re-enable it so the
        # adapters inside those blocks still receive gradients.
        wrapped.enable_input_require_grads()
    return wrapped


def is_lora_model(model: "torch.nn.Module") -> bool:
    """True if `model` is a peft-wrapped model (as `apply_lora` returns)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_scaling(model: "torch.nn.Module") -> float:
    """The factor peft applies to the adapter's update B @ A: alpha / rank (alpha / sqrt(rank) with rsLoRA)."""
    config = model.peft_config[ADAPTER_NAME]
    return config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r)


def merge_lora_state_dict(state_dict: dict[str, "torch.Tensor"], scaling: float) -> dict[str, "torch.Tensor"]:
    """The base model's state dict with every adapter merged: W' = W + scaling * B @ A.

    Args:
        state_dict: A peft model's full state dict (`...q_proj.base_layer.weight`, `...lora_A.default.weight`,
            `...lora_B.default.weight`, and `modules_to_save` copies).
        scaling: `lora_scaling(model)`.

    Returns:
        Tensors under the base model's own names (`model.layers.0.self_attn.q_proj.weight`), in their
        original dtypes; the merge itself is computed in float32.
    """
    merged: dict[str, "torch.Tensor"] = {}
    for name, tensor in state_dict.items():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapters are folded in below; a trained `modules_to_save` copy wins
        base_name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        base_name = base_name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")
        if name.endswith(".base_layer.weight"):
            stem = name.removesuffix(".base_layer.weight")
            lora_a = state_dict[f"{stem}.lora_A.{ADAPTER_NAME}.weight"]  # [rank, in]
            lora_b = state_dict[f"{stem}.lora_B.{ADAPTER_NAME}.weight"]  # [out, rank]
            update = scaling * (lora_b.float() @ lora_a.float())  # [out, in]
            tensor = (tensor.float() + update).to(tensor.dtype)
        merged[base_name] = tensor
    return merged


def save_lora(
    model: "torch.nn.Module",
    tokenizer: "PreTrainedTokenizerBase",
    directory: str | Path,
    state_dict: Optional[dict[str, "torch.Tensor"]] = None,
    merge: bool = True,
) -> Path:
    """Save the adapter alone to `<directory>/adapter/`, and with `merge` a full HF checkpoint
    (safetensors, adapter merged) plus the tokenizer at `directory` itself.

    Args:
        model: The peft-wrapped model.
        tokenizer: Saved next to both checkpoints.
        directory: Output directory.
        state_dict: The full (gathered) peft state dict; default `model.state_dict()`.
        merge: Also write the merged full model (`model.lora.merge_on_save`).
    """
    directory = Path(directory)
    state = state_dict if state_dict is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    adapter_dir = directory / ADAPTER_DIR
    model.save_pretrained(str(adapter_dir), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    if merge:
        merged = merge_lora_state_dict(state, lora_scaling(model))
        model.get_base_model().save_pretrained(str(directory), state_dict=merged, safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory
