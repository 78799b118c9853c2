"""Build a causal LM: from a local HF checkpoint directory, or a tiny LLaMA/Qwen2 from config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chimed_ray.utils.files import InputError, atomic_directory

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from chimed_ray.config import TinyModelConfig

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(precision: str) -> "torch.dtype":
    """Map a precision name (fp32/bf16/fp16) to a torch dtype."""
    import torch

    return getattr(torch, DTYPES[precision])


def tiny_model_config(tiny: "TinyModelConfig", tokenizer: "PreTrainedTokenizerBase"):
    """An HF `LlamaConfig`/`Qwen2Config` for the tiny shape, sized to the tokenizer's vocabulary."""
    from transformers import LlamaConfig, Qwen2Config

    config_cls = LlamaConfig if tiny.architecture == "llama" else Qwen2Config
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        rope_theta=tiny.rope_theta,
        tie_word_embeddings=tiny.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def is_hf_checkpoint(path: str | Path) -> bool:
    """True if `path` looks like an HF model directory: config.json plus safetensors weights.

    PyTorch `*.bin` weights do not count: they are pickles, and unpickling runs code.
    """
    path = Path(path)
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    return (path / "config.json").is_file() and has_weights


def require_hf_checkpoint(path: str | Path, key: str) -> Path:
    """`path` if it is an HF checkpoint with safetensors weights, else InputError naming the config
    `key`, the path, and for a missing one the stage that makes it."""
    from chimed_ray.config.producers import producer_hint

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{key}: {path}: model checkpoint directory not found; {producer_hint(path, key)}")
    if not is_hf_checkpoint(path):
        if any(path.glob("*.bin")):
            raise InputError(
                f"{key}: {path} has only PyTorch *.bin weights (pickles, which run code when loaded); "
                "chimed-ray loads safetensors only: re-save it with save_pretrained(safe_serialization=True) "
                "where you trust the file"
            )
        raise InputError(f"{key}: {path} is not an HF model checkpoint (needs config.json and *.safetensors)")
    return path


def load_causal_lm(
    path: str | Path,
    precision: str = "fp32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    key: str = "model.path",
) -> "PreTrainedModel":
    """Load an `AutoModelForCausalLM` from a local HF checkpoint directory (safetensors only), in `precision`.

    transformers (>= 5) builds the model on the meta device and streams the safetensors into it,
    so host memory peaks near one copy of the weights in the target dtype; inside
    `trainers.engine.sharded_construction` (ZeRO-3) each rank keeps only its partition.
    """
    from transformers import AutoModelForCausalLM

    require_hf_checkpoint(path, key)
    return AutoModelForCausalLM.from_pretrained(
        str(path),
        use_safetensors=True,
        dtype=torch_dtype(precision),
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )


def build_causal_lm(
    path: str,
    tiny: "TinyModelConfig",
    tokenizer: "PreTrainedTokenizerBase",
    precision: str = "fp32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> "PreTrainedModel":
    """Load the checkpoint at `path`, or build a freshly initialised tiny model when it is empty."""
    import torch
    from transformers import AutoModelForCausalLM

    if path:
        return load_causal_lm(path, precision, trust_remote_code, attn_implementation)
    torch.manual_seed(seed)
    config = tiny_model_config(tiny, tokenizer)
    config._attn_implementation = attn_implementation
    return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(precision))


def save_hf_checkpoint(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    output_dir: str | Path,
    state_dict: dict | None = None,
) -> Path:
    """Save model (safetensors) and tokenizer to `output_dir` atomically; returns the directory."""
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return Path(output_dir)
