"""LoRA: the state-dict merge on hand-worked numbers, what `apply_lora` freezes, what the DeepSpeed
optimizer receives, and a LoRA SFT run on Ray Train (2 workers, ZeRO-2) in which only adapter
weights change and the merged checkpoint computes the same logits as base + adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.config import OptimConfig, ScaleConfig, SFTConfig, TinyModelConfig, load_config
from chimed_ray.config.common import LoRAConfig
from chimed_ray.models.lora import PEFT_PREFIX, apply_lora, merge_lora_state_dict, save_lora
from chimed_ray.trainers.task import StageTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The default projections plus lm_head: a freshly initialised model's random hidden states leave the
# projections alone little to learn in a few steps, while an lm_head adapter learns the answer tokens.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def test_merge_lora_state_dict_by_hand():
    # W = I, A = [1 2] (rank 1), B = [1 0]^T, scaling 2: W + 2 * B @ A = [[3, 4], [0, 1]].
    state = {
        "base_model.model.proj.base_layer.weight": torch.eye(2),
        "base_model.model.proj.base_layer.bias": torch.tensor([0.5, -0.5]),
        "base_model.model.proj.lora_A.default.weight": torch.tensor([[1.0, 2.0]]),
        "base_model.model.proj.lora_B.default.weight": torch.tensor([[1.0], [0.0]]),
        "base_model.model.norm.weight": torch.ones(2),
        "base_model.model.score.original_module.weight": torch.zeros(1, 2),
        "base_model.model.score.modules_to_save.default.weight": torch.tensor([[7.0, 8.0]]),
    }
    merged = merge_lora_state_dict(state, scaling=2.0)
    assert sorted(merged) == ["norm.weight", "proj.bias", "proj.weight", "score.weight"]
    assert_close(merged["proj.weight"], torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert_close(merged["proj.bias"], torch.tensor([0.5, -0.5]))
    assert_close(merged["score.weight"], torch.tensor([[7.0, 8.0]]))  # the trained copy wins


def _tiny_model(tokenizer):
    from chimed_ray.models import build_causal_lm

    return build_causal_lm("", TinyModelConfig(), tokenizer, seed=0)


def test_apply_lora_trains_only_adapters_and_the_optimizer_gets_only_them(tokenizer):
    from chimed_ray.trainers.engine import make_optimizer

    model = apply_lora(_tiny_model(tokenizer), LoRAConfig(enabled=True, rank=4))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # 2 layers x 7 projections x (A, B)
    assert len(trainable) == 28 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == targets
    optimizer, scheduler = make_optimizer(model, OptimConfig(), ScaleConfig(), total_steps=10)
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == 28 and all(p.requires_grad for p in in_optimizer)
    assert len(scheduler.base_lrs) == len(optimizer.param_groups)  # no empty group for DeepSpeed to drop


def test_lora_off_keeps_the_plain_model_and_its_save(tokenizer, tmp_path):
    config = load_config(SFTConfig, None, [])
    model = _tiny_model(tokenizer)
    task = StageTask()
    assert task.maybe_apply_lora(model, config) is model
    task.save_model(model, model.state_dict(), tokenizer, tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").is_file() and not (tmp_path / "plain" / "adapter").exists()


def test_save_lora_without_merge_writes_only_the_adapter(tokenizer, tmp_path):
    model = apply_lora(_tiny_model(tokenizer), LoRAConfig(enabled=True, rank=2))
    save_lora(model, tokenizer, tmp_path / "out", merge=False)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert (tmp_path / "out" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------- Ray Train, ZeRO-2


@pytest.fixture(scope="module")
def lora_sft_run(ray_cluster, tiny_checkpoint, tmp_path_factory) -> Path:
    from chimed_ray.trainers.launch import run_ray_train

    output_dir = tmp_path_factory.mktemp("lora_sft")
    config = load_config(
        SFTConfig,
        CONFIGS / "sft" / "tiny.yaml",
        [
            f"model.path={tiny_checkpoint}", f"output_dir={output_dir}", "model.lora.enabled=true",
            "model.lora.rank=8", "model.lora.alpha=16", f"model.lora.target_modules=[{','.join(LORA_TARGETS)}]",
            "optim.lr=1e-2", "optim.max_steps=8",
            "scale.zero_stage=2", "logging.log_every=1", "logging.eval_every=0", "logging.save_every=0",
            "logging.progress_bar=false",
        ],
    )
    return run_ray_train("sft", config)


def _trained_module_state(final: Path) -> dict[str, torch.Tensor]:
    """The full (unmerged) peft state of the last step, from the DeepSpeed checkpoint."""
    run_dir = final.parent / "ray" / "sft"
    (states,) = run_dir.glob("checkpoint_*/deepspeed/state/mp_rank_00_model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def test_lora_sft_lowers_loss_and_changes_only_adapters(
    lora_sft_run, tiny_checkpoint, initial_adapters, assert_adapters_trained
):
    from safetensors.torch import load_file

    from chimed_ray.utils.tracking import read_metrics

    losses = [r["train/loss"] for r in read_metrics(lora_sft_run.parent / "metrics.jsonl") if "train/loss" in r]
    assert losses[-1] < losses[0] * 0.95, losses
    trained = _trained_module_state(lora_sft_run)
    # A gets no gradient while B is zero (step 1), then 7 Adam steps of lr <= 1e-2 move it by at most
    # ~0.07; a wrongly rebuilt start would be off by up to twice A's init bound 1/sqrt(64) = 0.125.
    assert_adapters_trained(trained, initial_adapters(tiny_checkpoint, 8, 16.0, LORA_TARGETS), max_drift=0.1)
    assert sum(".lora_" in name for name in trained) == 30  # 2 layers x 7 projections + lm_head, A and B
    base = load_file(str(tiny_checkpoint / "model.safetensors"))
    frozen = [name for name in trained if ".lora_" not in name]
    assert len(frozen) == len(base)
    for name in frozen:  # bit-identical base weights
        assert torch.equal(trained[name], base[name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")]), name


def _base_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


def test_merged_checkpoint_gives_the_logits_of_base_plus_adapter(lora_sft_run, tiny_checkpoint, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(lora_sft_run)).eval()
    adapted = PeftModel.from_pretrained(_base_model(tiny_checkpoint), str(lora_sft_run / "adapter")).eval()
    base = _base_model(tiny_checkpoint).eval()
    ids = tokenizer("[human]:高血压患者平时要注意什么？\n[bot]:", return_tensors="pt").input_ids
    with torch.no_grad():
        merged_logits, adapted_logits, base_logits = merged(ids).logits, adapted(ids).logits, base(ids).logits
    assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2  # the adapter did something
