"""Tokenizer, tiny models from config, local HF checkpoints, and the DeepSpeed/LR set-up."""

from __future__ import annotations

import math

import pytest
import torch

from chimed_ray.config import OptimConfig, ScaleConfig, TinyModelConfig
from chimed_ray.models import build_causal_lm, is_hf_checkpoint, load_tokenizer, save_hf_checkpoint, train_tokenizer
from chimed_ray.trainers.engine import deepspeed_config, warmup_cosine
from chimed_ray.utils.files import InputError


def test_bundled_tokenizer_round_trips_chinese(tokenizer):
    text = "患者，男，45岁，血压160/100 mmHg，建议服用氨氯地平。"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # BPE merges common medical words: far fewer tokens than UTF-8 bytes.
    assert len(ids) < len(text.encode("utf-8")) / 2
    assert tokenizer.convert_tokens_to_ids("</s>") == tokenizer.eos_token_id
    assert tokenizer("</s>", add_special_tokens=False)["input_ids"] == [tokenizer.eos_token_id]


def test_train_tokenizer_saves_hf_format(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "发热咳嗽三天，体温38.5℃。"}\n' * 20, encoding="utf-8")
    train_tokenizer([corpus], tmp_path / "tok", vocab_size=300)
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "</s>"
    assert loaded.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True) == "[human]:你好\n[bot]:"


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_tiny_model_from_config(tokenizer, architecture):
    tiny = TinyModelConfig(architecture=architecture, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    model = build_causal_lm("", tiny, tokenizer, seed=1)
    assert model.config.model_type == architecture
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.num_key_value_heads == 2
    again = build_causal_lm("", tiny, tokenizer, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_local_hf_checkpoint_loads_with_the_same_logits(tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    original = Qwen2ForCausalLM(config).eval()
    path = save_hf_checkpoint(original, tokenizer, tmp_path / "qwen")
    assert is_hf_checkpoint(path) and (path / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".qwen.tmp-*")), "atomic save left a temporary directory"
    loaded = build_causal_lm(str(path), TinyModelConfig(), tokenizer).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, original(ids).logits)


def test_not_a_checkpoint_is_a_clear_error(tokenizer, tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="not an HF model checkpoint"):
        build_causal_lm(str(tmp_path), TinyModelConfig(), tokenizer)
    with pytest.raises(InputError, match="model checkpoint directory not found"):
        build_causal_lm(str(tmp_path / "missing"), TinyModelConfig(), tokenizer)


def test_warmup_then_cosine_by_hand():
    # 10 steps, 2 warmup, floor 0.1: step 0 -> 1/2, step 1 -> 2/2, then cosine over 8 steps.
    assert warmup_cosine(0, 10, 2, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1, 10, 2, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(2, 10, 2, 0.1) == pytest.approx(1.0)  # progress 0
    # step 6: progress 4/8 = 0.5 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55
    assert warmup_cosine(6, 10, 2, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(4, 10, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4)))


def test_deepspeed_config_follows_the_scale_section():
    optim = OptimConfig(micro_batch_size=4, gradient_accumulation_steps=8, max_grad_norm=1.0)
    gpu = deepspeed_config(optim, ScaleConfig(use_gpu=True, zero_stage=3, offload_optimizer=True, offload_params=True))
    assert gpu["bf16"] == {"enabled": True} and gpu["fp16"]["enabled"] is False
    assert gpu["zero_optimization"]["stage"] == 3
    assert gpu["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert gpu["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert gpu["train_micro_batch_size_per_gpu"] == 4 and gpu["gradient_accumulation_steps"] == 8
    cpu = deepspeed_config(optim, ScaleConfig(zero_stage=2))
    assert cpu["bf16"]["enabled"] is False and "offload_optimizer" not in cpu["zero_optimization"]
