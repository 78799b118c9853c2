"""Tokenizers and models: built from a tiny config or loaded from a local HF checkpoint."""

from chimed_ray.models.build import (
    build_causal_lm,
    is_hf_checkpoint,
    load_causal_lm,
    require_hf_checkpoint,
    save_hf_checkpoint,
    tiny_model_config,
    torch_dtype,
)
from chimed_ray.models.tokenizer import CHIMED_CHAT_TEMPLATE, load_tokenizer, train_tokenizer

__all__ = [
    "CHIMED_CHAT_TEMPLATE",
    "build_causal_lm",
    "is_hf_checkpoint",
    "load_causal_lm",
    "load_tokenizer",
    "require_hf_checkpoint",
    "save_hf_checkpoint",
    "tiny_model_config",
    "torch_dtype",
    "train_tokenizer",
]
