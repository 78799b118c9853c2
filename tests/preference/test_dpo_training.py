"""DPO-family training from the tiny checkpoint.

On Ray Train (2 workers, ZeRO-2, CPU): DPO raises the chosen-minus-rejected margin on held-out
pairs; the reference is scored once into a cache that later runs reuse, and training steps never
load it (it is deleted before the IPO run). In process: SimPO (with LoRA) and ORPO are
reference-free and train without a cache. Every run's loss falls and every trainable tensor changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chimed_ray.config import load_config
from chimed_ray.config.dpo import DPOConfig
from chimed_ray.trainers.dpo import (
    CACHE_NAME,
    DPOTask,
    answer_logprobs,
    build_pairs,
    collate_pairs,
    ensure_reference_logps,
    resolve_reference,
    run_dpo,
)
from chimed_ray.utils.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The default projections plus lm_head: on a freshly initialised model the projections alone learn slowly.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
QUICK = ["logging.log_every=1", "logging.save_every=0", "logging.progress_bar=false", "reference.num_actors=1"]


def _config(output_dir: Path, *overrides: str) -> DPOConfig:
    return load_config(DPOConfig, CONFIGS / "dpo" / "tiny.yaml", [f"output_dir={output_dir}", *QUICK, *overrides])


def _assert_loss_falls(output_dir: Path) -> None:
    losses = [r["train/loss"] for r in read_metrics(output_dir / "metrics.jsonl") if "train/loss" in r]
    third = max(1, len(losses) // 3)
    assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses


def _assert_every_tensor_changed(before: Path, after: Path) -> None:
    start, end = load_file(str(before / "model.safetensors")), load_file(str(after / "model.safetensors"))
    unchanged = [name for name in start if torch.equal(start[name], end[name])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """The policy's starting checkpoint and an identical copy as the reference (deleted mid-module)."""
    root = tmp_path_factory.mktemp("dpo_start")
    return shutil.copytree(tiny_checkpoint, root / "policy"), shutil.copytree(tiny_checkpoint, root / "reference")


@pytest.fixture(scope="module")
def dpo_run(ray_cluster, checkpoints, tmp_path_factory) -> tuple[DPOConfig, Path]:
    policy, reference = checkpoints
    config = _config(
        tmp_path_factory.mktemp("dpo"), f"model.path={policy}", f"reference.path={reference}",
        "optim.max_steps=12", "logging.eval_every=12",
    )
    return config, run_dpo(config)


def _held_out_margin(checkpoint: Path, config: DPOConfig, tokenizer) -> float:
    """Mean over held-out pairs of log p(chosen answer) - log p(rejected answer)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    _, held_out = build_pairs(config, tokenizer)
    batch = collate_pairs(held_out, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        sums, _ = answer_logprobs(logits, batch.labels)
    return float((sums[: len(held_out)] - sums[len(held_out) :]).mean())


def test_dpo_raises_the_held_out_margin(dpo_run, checkpoints, tokenizer):
    config, final = dpo_run
    output_dir = Path(config.output_dir)
    _assert_loss_falls(output_dir)
    _assert_every_tensor_changed(checkpoints[0], final)
    held_out = [r for r in read_metrics(output_dir / "metrics.jsonl") if "eval/reward_margin" in r][-1]
    # Policy and reference start equal, so the implicit-reward margin starts at 0.
    assert held_out["eval/reward_margin"] > 0 and held_out["eval/reward_accuracy"] > 0.5, held_out
    before, after = _held_out_margin(checkpoints[0], config, tokenizer), _held_out_margin(final, config, tokenizer)
    assert after > before + 0.5, (before, after)


def test_reference_logps_are_cached_once_and_reused(dpo_run, tokenizer):
    config, _ = dpo_run
    cache = Path(config.output_dir) / CACHE_NAME
    written = cache.read_bytes()
    train, held_out = build_pairs(config, tokenizer)
    assert len(written.splitlines()) == 1 + len({e.key for e in train + held_out})  # header + one line a pair
    path, scored_now = ensure_reference_logps(resolve_reference(config))
    assert path == cache and scored_now == 0
    assert cache.read_bytes() == written


def test_training_steps_never_run_the_reference(dpo_run, checkpoints, tmp_path):
    """IPO reuses the DPO run's cache after the reference checkpoint is deleted: Ray Train
    workers read reference log-probabilities from the cache and never load the model."""
    from chimed_ray.trainers.launch import run_ray_train

    dpo_config, _ = dpo_run
    policy, reference = checkpoints
    cache = Path(dpo_config.output_dir) / CACHE_NAME
    written = cache.read_bytes()
    shutil.rmtree(reference)
    config = _config(
        tmp_path, "algorithm.loss=ipo", f"model.path={policy}", f"reference.path={reference}",
        f"reference.cache_file={cache}", "optim.max_steps=6",
    )
    final = run_ray_train("dpo", config)
    _assert_loss_falls(tmp_path)
    _assert_every_tensor_changed(policy, final)
    assert cache.read_bytes() == written


@pytest.mark.parametrize("loss, lora", [("simpo", True), ("orpo", False)])
def test_reference_free_losses_train_without_a_cache(loss, lora, tiny_checkpoint, tokenizer, tmp_path):
    """SimPO (with LoRA) and ORPO through the task's own hooks, in process: no reference scores
    are needed, a few steps on one batch lower the loss and change every trainable tensor."""
    overrides = [f"algorithm.loss={loss}", f"model.path={tiny_checkpoint}", "optim.lr=5e-3"]
    if lora:
        overrides += ["model.lora.enabled=true", f"model.lora.target_modules=[{','.join(LORA_TARGETS)}]"]
    task = DPOTask()
    config = _config(tmp_path, *overrides)
    train, held_out = task.build_examples(config, tokenizer)
    assert held_out and not (tmp_path / CACHE_NAME).exists()
    model = task.build_model(config, tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr)
    batch = task.collate(train[:4], tokenizer)
    losses = []
    for _ in range(4):
        loss_value, metrics, weight = task.compute_loss(model, batch)
        loss_value.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss_value))
    assert weight == 4 and {"reward_margin", "reward_accuracy"} <= set(metrics)
    assert losses[-1] < losses[0], losses
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == param.requires_grad, f"{name}: changed={changed}, trainable={param.requires_grad}"
    assert sum(p.requires_grad for p in model.parameters()) == (30 if lora else len(before))  # 2 layers x 7 + lm_head, A and B
