"""What a Ray Train stage plugs into the shared training loop.

A stage (pretrain, SFT, reward model, DPO) is a `StageTask`: it builds its examples, its model,
batches, and the loss. The loop in `loop.py` owns everything else (DeepSpeed, sharding, logging,
evaluation, checkpoints, resume), so no stage re-implements a training loop.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from chimed_ray.config import TrainStageConfig
    from chimed_ray.config.common import LoRAConfig

TASKS = {
    "pretrain": "chimed_ray.trainers.pretrain:PretrainTask",
    "sft": "chimed_ray.trainers.sft:SFTTask",
    "reward": "chimed_ray.trainers.reward:RewardTask",
    "dpo": "chimed_ray.trainers.dpo:DPOTask",
}
# The record shape each task reads (`data.splits.load_split` kinds); the driver checks its data
# in that shape before any worker starts.
DATA_KINDS = {"pretrain": "pretrain", "sft": "sft", "reward": "preference", "dpo": "preference"}


class StageTask:
    """Base class; subclasses set `config_cls` and implement the four hooks below."""

    config_cls: type = None  # type: ignore[assignment]
    # Keys of the metrics dict shown in the progress bar and plotted at the end.
    plot_keys: tuple[str, ...] = ("train/loss", "eval/loss")
    # The `model.lora` section `build_model` applied; `save_model` reads `merge_on_save` from it.
    lora: Optional["LoRAConfig"] = None

    def build_examples(self, config: "TrainStageConfig", tokenizer: "PreTrainedTokenizerBase") -> tuple[list, list]:
        """Return (train_examples, eval_examples); identical on every rank."""
        raise NotImplementedError

    def build_model(self, config: "TrainStageConfig", tokenizer: "PreTrainedTokenizerBase") -> "torch.nn.Module":
        """Return the (HF) model to train, its weights in the training dtype (bf16 on GPU; DeepSpeed
        keeps fp32 master weights in the optimizer). The loop calls this inside
        `sharded_construction`, so under ZeRO-3 HF builds it already partitioned."""
        from chimed_ray.models import build_causal_lm

        model = build_causal_lm(
            config.model.path,
            config.model.tiny,
            tokenizer,
            precision=config.scale.resolved_precision(),
            trust_remote_code=config.model.trust_remote_code,
            attn_implementation=config.model.attn_implementation,
            seed=config.optim.seed,
        )
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return self.maybe_apply_lora(model, config)

    def maybe_apply_lora(
        self, model: "torch.nn.Module", config: "TrainStageConfig", **lora_options: Any
    ) -> "torch.nn.Module":
        """Wrap `model` with LoRA adapters when `model.lora.enabled`; stages that build their own
        model call this too. `lora_options` go to `apply_lora` (e.g. `modules_to_save`)."""
        self.lora = config.model.lora
        if not self.lora.enabled:
            return model
        from chimed_ray.models.lora import apply_lora

        # from_pretrained returns eval mode and the loop switches to train mode only after its
        # first evaluation, which would silently switch off `model.lora.dropout` until then.
        return apply_lora(model, self.lora, **lora_options).train()

    def collate(self, examples: Sequence[Any], tokenizer: "PreTrainedTokenizerBase") -> Any:
        """Turn a list of examples into a batch with a `.to(device)` method."""
        raise NotImplementedError

    def compute_loss(self, model: "torch.nn.Module", batch: Any) -> tuple["torch.Tensor", dict[str, float], float]:
        """Return (loss, metrics, weight); eval averages metrics weighted by `weight`."""
        raise NotImplementedError

    def save_model(self, model: "torch.nn.Module", state_dict: dict, tokenizer: "PreTrainedTokenizerBase", directory: Path) -> None:
        """Save the trained model as an HF directory (safetensors + tokenizer); a LoRA model also
        gets its adapter alone in `adapter/`."""
        from chimed_ray.models.lora import is_lora_model, save_lora

        if is_lora_model(model):
            merge = self.lora.merge_on_save if self.lora is not None else True
            save_lora(model, tokenizer, directory, state_dict, merge=merge)
            return
        model.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(directory))


def load_task(name: str) -> StageTask:
    """Instantiate the task registered under `name`."""
    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def causal_lm_loss(model: "torch.nn.Module", batch) -> tuple["torch.Tensor", dict[str, float], float]:
    """Mean next-token cross-entropy over target tokens of an `LMBatch`."""
    output = model(**batch.model_inputs())
    tokens = batch.num_target_tokens()
    return output.loss, {"loss": float(output.loss.detach())}, float(tokens)
