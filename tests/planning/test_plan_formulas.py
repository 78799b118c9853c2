"""The memory plan's formulas: model states against DeepSpeed's own estimators, parameter counts
against real HF models, and hand-worked KV-cache and activation figures."""

from __future__ import annotations

import pytest

from chimed_ray.planning import memory
from chimed_ray.planning.memory import ZeroSetup, model_states
from chimed_ray.planning.shapes import ModelShape, shape_from_hf_config

ZIYA2_13B = {"model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
             "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 39424}
QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
TINY_TIED = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 6000, "tie_word_embeddings": True}
SHAPES = {"ziya2_13b": ZIYA2_13B, "qwen2_7b": QWEN2_7B, "tiny_tied": TINY_TIED}
TOPOLOGIES = [(1, 1), (8, 1), (4, 2), (8, 4)]  # (GPUs per node, nodes)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("gpus_per_node,nodes", TOPOLOGIES)
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_equal_deepspeed_estimator(name, gpus_per_node, nodes, offload):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = shape_from_hf_config(SHAPES[name], name)
    params = shape.causal_lm_params()
    cpu, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=offload)
    ours = model_states(params, shape.largest_layer_params(),
                        ZeroSetup(2, gpus_per_node * nodes, offload_optimizer=offload, gpus_per_node=gpus_per_node))
    assert (ours.device, ours.host) == (gpu, cpu)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("gpus_per_node,nodes", TOPOLOGIES)
@pytest.mark.parametrize("offload_optimizer,offload_params", [(False, False), (True, False), (True, True)])
def test_zero3_model_states_equal_deepspeed_estimator(name, gpus_per_node, nodes, offload_optimizer, offload_params):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape = shape_from_hf_config(SHAPES[name], name)
    params, largest = shape.causal_lm_params(), shape.largest_layer_params()
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, gpus_per_node, nodes,
                                                        cpu_offload=offload_optimizer, cpu_offload_params=offload_params)
    ours = model_states(params, largest, ZeroSetup(3, gpus_per_node * nodes, offload_optimizer, offload_params,
                                                   gpus_per_node=gpus_per_node))
    assert (ours.device, ours.host) == (gpu, cpu)


def test_stage0_is_stage2_on_one_rank_and_fp32_has_no_master_copy():
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = 1_000_000
    _, one_gpu = estimate_zero2_model_states_mem_needs(p, 1, 1, cpu_offload=False)
    assert model_states(p, 0, ZeroSetup(0, 8)).device == one_gpu == 20 * p
    # Pure fp32 AdamW: weights, gradients, two moments; ZeRO-1 shards only the moments.
    assert model_states(p, 0, ZeroSetup(0, 1, mixed_precision=False)).device == 16 * p
    assert model_states(p, 0, ZeroSetup(1, 4, mixed_precision=False)).device == 4 * p + 4 * p + 8 * p // 4
    # ZeRO-1 in bf16: 16-bit weights and gradients whole, fp32 gradients + masters + moments sharded.
    assert model_states(p, 0, ZeroSetup(1, 4)).device == 2 * p + 2 * p + 16 * p // 4


def _module_params(model) -> tuple[int, int]:
    """Total (shared weights once) and largest single module, as DeepSpeed's model_to_params counts
    them (by identity instead of data_ptr, which meta tensors lack)."""
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


@pytest.mark.parametrize("config", [TINY_TIED, {**QWEN2_7B, "num_hidden_layers": 2, "vocab_size": 1000},
                                    {**ZIYA2_13B, "num_hidden_layers": 1}])
def test_parameter_counts_match_hf_models(config):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    hf_config = AutoConfig.for_model(**{k: v for k, v in config.items()})
    hf_config.num_labels = 1
    shape = shape_from_hf_config(config, "test")
    with torch.device("meta"):
        causal, scalar = AutoModelForCausalLM.from_config(hf_config), AutoModelForSequenceClassification.from_config(hf_config)
    assert _module_params(causal) == (shape.causal_lm_params(), shape.largest_layer_params())
    assert _module_params(scalar)[0] == shape.scalar_head_params()


def test_lora_parameter_count_matches_peft(tiny_checkpoint):
    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.models import load_causal_lm
    from chimed_ray.models.lora import apply_lora
    from chimed_ray.planning.shapes import read_model_shape

    lora = LoRAConfig(enabled=True, rank=4, target_modules=["q_proj", "v_proj", "down_proj"])
    model = apply_lora(load_causal_lm(str(tiny_checkpoint)), lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert read_model_shape(str(tiny_checkpoint), "model.path").lora_params(4, lora.target_modules) == trainable


def test_kv_cache_and_logits_by_hand():
    shape = shape_from_hf_config(ZIYA2_13B, "ziya")
    # 2 (k, v) x 40 layers x 5120 x 2 bytes = 800 KiB per token; 64 sequences x 2048 tokens = 100 GiB.
    assert memory.kv_cache_bytes(shape, 64, 2048, 2) == 2 * 40 * 5120 * 2 * 64 * 2048 == 100 * memory.GIB
    # GQA: only the 4 key/value heads of 128 dims are cached.
    qwen = shape_from_hf_config(QWEN2_7B, "qwen")
    assert memory.kv_cache_bytes(qwen, 1, 1000, 2) == 2 * 28 * 4 * 128 * 2 * 1000
    # Training logits in bf16: 2-byte logits + fp32 log-softmax + fp32 gradients of both.
    assert memory.training_logits(shape, 1, 4096, 2) == 14 * 4096 * 39424


def test_activations_by_hand_and_checkpointing():
    shape = ModelShape(hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                       vocab_size=10)
    # fp32, one token: each RMSNorm keeps 3 x 8 floats; attention 9 x 8 floats (q, rot q, q_embed, k,
    # rot k, k_embed, v, output, its copy) + 2 fp32 log-sum-exps; MLP 4 x 16 floats.
    per_layer = 4 * (2 * 3 * 8 + 9 * 8 + 4 * 16) + 4 * 2
    assert memory.layer_activation_bytes(shape, 4, repeat_kv=False) == per_layer
    full = memory.training_activations(shape, 1, 1, 4, "flash_attention_2", checkpointing=False)
    assert full == 2 * per_layer + 4 * 3 * 8
    checkpointed = memory.training_activations(shape, 1, 1, 4, "flash_attention_2", checkpointing=True)
    assert checkpointed == 2 * 4 * 8 + per_layer + 4 * 3 * 8  # layer inputs + one recomputed layer
    # Eager attention keeps the s x s probabilities (fp32 softmax + its cast); sdpa does not.
    eager = memory.training_activations(shape, 1, 100, 4, "eager", checkpointing=False)
    sdpa = memory.training_activations(shape, 1, 100, 4, "sdpa", checkpointing=False)
    assert eager - sdpa == 2 * 2 * 100 * 100 * 8


def test_shape_errors_name_the_file_and_key():
    from chimed_ray.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"cfg.json: hidden_size must be a positive integer"):
        shape_from_hf_config({**ZIYA2_13B, "hidden_size": "big"}, "cfg.json")
    with pytest.raises(ConfigError, match=r"cfg.json: num_key_value_heads must divide"):
        shape_from_hf_config({**ZIYA2_13B, "num_key_value_heads": 3}, "cfg.json")
    with pytest.raises(ConfigError, match=r"mixture-of-experts"):
        shape_from_hf_config({**ZIYA2_13B, "num_local_experts": 8}, "cfg.json")


def test_frozen_roles_as_replicas_or_zero3_inference_shards():
    from chimed_ray.planning.roles import Model, Runtime

    shape = shape_from_hf_config(ZIYA2_13B, "ziya")
    runtime = Runtime("gpu", "bf16")
    replica = Model(shape, runtime, lm_head=True).states()
    sharded = Model(shape, runtime, lm_head=True, frozen_shards=4).states()
    assert replica.device == 2 * shape.causal_lm_params()  # bf16 weights, no gradients or optimizer
    assert sharded.device == 2 * shape.causal_lm_params() // 4 + 4 * shape.largest_layer_params()


def test_tiny_shape_matches_the_model_built_from_model_tiny(tokenizer, tiny_checkpoint):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm
    from chimed_ray.planning.shapes import tiny_shape

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=0)
    counted = sum(p.numel() for p in model.parameters())
    assert tiny_shape(TinyModelConfig()).causal_lm_params() == counted  # the bundled tokenizer's vocabulary
    assert tiny_shape(TinyModelConfig(), str(tiny_checkpoint)).vocab_size == len(tokenizer)  # its tokenizer.json
