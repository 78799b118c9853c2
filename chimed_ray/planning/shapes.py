"""Model shapes for the memory plan, read from an HF `config.json` (no weights, no torch).

A decoder-only transformer in the LLaMA / Qwen2 / Mistral family is described by a handful of
numbers; parameter counts follow from them exactly (checked against HF models in tests).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chimed_ray.config.loader import ConfigError

# The tokenizer trained on the bundled corpus (models/tokenizer.py) has this many tokens; a model
# built from `model.tiny` is sized to it.
BUNDLED_TOKENIZER_VOCAB = 6000
# Architectures whose q/k/v projections carry biases.
QKV_BIAS_MODEL_TYPES = ("qwen2",)


@dataclass(frozen=True)
class ModelShape:
    """The numbers the plan needs about one model. `source` names where they came from."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    source: str = ""

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection: num_kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    def layer_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_size), "k_proj": (h, self.kv_size), "v_proj": (h, self.kv_size),
            "o_proj": (self.q_size, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @functools.lru_cache(maxsize=None)
    def layer_params(self) -> int:
        """Parameters of one decoder layer: projections (+ q/k/v biases), two RMSNorms."""
        weights = sum(fan_in * fan_out for fan_in, fan_out in self.layer_linear_shapes().values())
        biases = self.q_size + 2 * self.kv_size if self.qkv_bias else 0
        return weights + biases + 2 * self.hidden_size

    @functools.lru_cache(maxsize=None)
    def backbone_params(self) -> int:
        """Embedding, decoder layers and the final norm (no output head)."""
        return self.vocab_size * self.hidden_size + self.num_layers * self.layer_params() + self.hidden_size

    def causal_lm_params(self) -> int:
        """Backbone plus the LM head (shared with the embedding when tied, counted once)."""
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.backbone_params() + head

    def scalar_head_params(self) -> int:
        """Backbone plus a one-output score head (reward model, critic)."""
        return self.backbone_params() + self.hidden_size

    @functools.lru_cache(maxsize=None)
    def largest_layer_params(self) -> int:
        """Parameters of the largest single module, as DeepSpeed's ZeRO-3 estimator counts them
        (`model_to_params`: each module's own parameters, not its children's)."""
        biased = ("q_proj", "k_proj", "v_proj") if self.qkv_bias else ()
        linears = max(fan_in * fan_out + (fan_out if name in biased else 0)
                      for name, (fan_in, fan_out) in self.layer_linear_shapes().items())
        embedding = self.vocab_size * self.hidden_size  # the embedding, and the LM head if any
        return max(linears, embedding)

    def lora_params(self, rank: int, target_modules: list[str]) -> int:
        """Trainable LoRA parameters: rank x (in + out) per targeted projection per layer."""
        shapes = self.layer_linear_shapes()
        return self.num_layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in target_modules if m in shapes)


def _require_int(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def shape_from_hf_config(config: dict[str, Any], where: str) -> ModelShape:
    """A `ModelShape` from the mapping in an HF `config.json`; `where` names the file in errors."""
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM's shape here
        config = {**config["text_config"], "tie_word_embeddings": config.get("tie_word_embeddings", False)}
    if config.get("num_local_experts") or config.get("num_experts"):
        raise ConfigError(f"{where}: mixture-of-experts models are not modelled by the memory plan; "
                          "set scale.memory_check=false to run without it")
    hidden = _require_int(config, "hidden_size", where)
    heads = _require_int(config, "num_attention_heads", where)
    kv_heads = config.get("num_key_value_heads") or heads
    if not isinstance(kv_heads, int) or isinstance(kv_heads, bool) or heads % kv_heads:
        raise ConfigError(f"{where}: num_key_value_heads must divide num_attention_heads={heads}, got {kv_heads!r}")
    head_dim = config.get("head_dim") or hidden // heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ConfigError(f"{where}: head_dim must be a positive integer, got {head_dim!r}")
    model_type = str(config.get("model_type", ""))
    return ModelShape(
        hidden_size=hidden, intermediate_size=_require_int(config, "intermediate_size", where),
        num_layers=_require_int(config, "num_hidden_layers", where), num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=_require_int(config, "vocab_size", where),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("attention_bias", model_type in QKV_BIAS_MODEL_TYPES)), source=where,
    )


def read_model_shape(path: str, key: str) -> ModelShape:
    """The shape of the HF model directory `path` from its `config.json` alone (weights are not
    needed, so a directory holding only `config.json` works). `key` names the config entry."""
    file = Path(path) / "config.json"
    stat = file.stat() if file.is_file() else None
    return _read_model_shape(path, key, (stat.st_mtime_ns, stat.st_size) if stat else None)


@functools.lru_cache(maxsize=64)
def _read_model_shape(path: str, key: str, stamp: tuple[int, int] | None) -> ModelShape:
    """`read_model_shape`, cached per file version (`stamp`): advice re-plans many times."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"{key}: {file} not found (the memory plan reads the model's shape from it)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return shape_from_hf_config(config, str(file))


def tiny_shape(tiny: Any, tokenizer_path: str = "") -> ModelShape:
    """The shape of a model built from `model.tiny` (empty `model.path`), sized to the tokenizer
    at `tokenizer_path` (its `tokenizer.json`) or to the bundled tokenizer."""
    vocab = BUNDLED_TOKENIZER_VOCAB
    tokenizer_file = Path(tokenizer_path) / "tokenizer.json" if tokenizer_path else None
    if tokenizer_file is not None and tokenizer_file.is_file():
        try:
            data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
            ids = list(data["model"]["vocab"].values()) + [token["id"] for token in data.get("added_tokens", [])]
            vocab = max(ids) + 1
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{tokenizer_file}: cannot read the vocabulary size") from None
    return ModelShape(
        hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size, num_layers=tiny.num_hidden_layers,
        num_heads=tiny.num_attention_heads, num_kv_heads=tiny.num_key_value_heads,
        head_dim=tiny.hidden_size // tiny.num_attention_heads, vocab_size=vocab,
        tie_word_embeddings=tiny.tie_word_embeddings, qkv_bias=tiny.architecture == "qwen2", source="model.tiny",
    )


def model_shape(path: str, tiny: Any, tokenizer_path: str, key: str) -> ModelShape:
    """`read_model_shape(path)` when `path` is set, else the tiny shape."""
    return read_model_shape(path, key) if path else tiny_shape(tiny, tokenizer_path)
