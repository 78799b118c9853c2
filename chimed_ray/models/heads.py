"""Scalar heads on a causal-LM backbone: the reward model (one score per answer) and the PPO critic
(one value per token).

Both are HF `AutoModelForSequenceClassification` models with `num_labels=1`, initialised from an
SFT causal-LM checkpoint (the backbone loads, the score head starts fresh) or from a saved reward
model, and saved as ordinary HF directories. We run the backbone and the head ourselves instead of
using HF's pooled logits: HF pools at the last token that is not `pad_token_id`, which is wrong
when pad and EOS share an id; we pool at the last position of the attention mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimed_ray.models.build import require_hf_checkpoint, tiny_model_config, torch_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from chimed_ray.config import TinyModelConfig


def build_scalar_model(
    path: str,
    tiny: "TinyModelConfig",
    tokenizer: "PreTrainedTokenizerBase",
    precision: str = "fp32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> "PreTrainedModel":
    """A sequence-classification model with one output, from `path` or a fresh tiny config.

    Args:
        path: An HF directory: a causal LM (SFT checkpoint; the head is newly initialised) or a
            reward/critic model saved by this module. Empty: a freshly initialised tiny model.
        tiny: Shape used when `path` is empty.
        tokenizer: Gives the vocabulary size and the pad id.
        precision: fp32, bf16 or fp16.
        seed: Seeds the fresh head (and the tiny backbone).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if not path:
        config = tiny_model_config(tiny, tokenizer)
        config.num_labels = 1
        config._attn_implementation = attn_implementation
        return AutoModelForSequenceClassification.from_config(config, dtype=torch_dtype(precision))
    require_hf_checkpoint(path, "reward/critic model")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    config.num_labels = 1
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, dtype=torch_dtype(precision), use_safetensors=True,
        trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
    )


def score_head_name(model: "PreTrainedModel") -> str:
    """Attribute name of the scalar head (`score` in LLaMA/Qwen, `classifier` elsewhere)."""
    for name in ("score", "classifier"):
        if getattr(model, name, None) is not None:
            return name
    raise TypeError(f"{type(model).__name__} has no score/classifier head")


def score_head(model: "PreTrainedModel") -> "torch.nn.Module":
    """The linear head of a sequence-classification model."""
    return getattr(model, score_head_name(model))


def position_ids_from_mask(attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Positions that skip left padding, as HF `generate` computes them: `[B, T]`."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _unwrapped(model: "torch.nn.Module") -> "torch.nn.Module":
    """The HF model inside a DeepSpeed engine and/or a peft (LoRA) wrapper."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    if hasattr(model, "get_base_model"):  # peft: adapters live inside the base model
        model = model.get_base_model()
    return model


def token_values(model: "torch.nn.Module", input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """The head's output at every position: `[B, T]` float32 (the critic's V(s_t)).

    Args:
        model: A sequence-classification model, its peft wrapper, or a DeepSpeed engine around
            either. The top-level forward runs, so every wrapper's hooks (ZeRO-3 parameter gathering)
            fire; the per-token scores are caught on their way out of the score head.
    """
    caught: list["torch.Tensor"] = []
    hook = score_head(_unwrapped(model)).register_forward_hook(lambda _module, _inputs, output: caught.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
              use_cache=False)
    finally:
        hook.remove()
    return caught[-1].squeeze(-1).float()  # [B, T]


def last_position(attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Index of the last attended position of each row: `[B]` (works for left and right padding)."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    return torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def sequence_scores(model: "PreTrainedModel", input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """The reward model's score of each sequence, read at its last non-pad token: `[B]` float32."""
    values = token_values(model, input_ids, attention_mask)  # [B, T]
    return values.gather(1, last_position(attention_mask).unsqueeze(1)).squeeze(1)


def require_hf_checkpoints(named_paths: dict[str, str]) -> None:
    """Fail on the driver, before any actor starts, if a configured model directory is missing or
    is not an HF checkpoint. `named_paths` maps config keys (`reward.path`) to paths; empty ones
    are skipped."""
    for key, path in named_paths.items():
        if not path:
            continue
        require_hf_checkpoint(path, key)
