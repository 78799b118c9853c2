"""The policy worker's update is consistent with how old log-probs were taken: the ratio is exactly
1 on the first minibatch even with LoRA dropout, and GRPO's KL-in-loss pulls toward the reference."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_first_minibatch_ratio_is_one_with_lora_dropout_and_kl_in_loss_trains(ray_cluster, tiny_checkpoint, tokenizer):
    import ray
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.distributed.batch import Experience, build_rollout_batch, concat_rows
    from chimed_ray.distributed.group import ActorGroup
    from chimed_ray.distributed.placement import RoleResources, plan_slots, release
    from chimed_ray.distributed.policy import PolicyLossSpec, PolicyWorker, eos_token_ids
    from chimed_ray.distributed.worker import ModelSpec
    from chimed_ray.rollout.base import SamplingParams

    slots = plan_slots({"policy": RoleResources(1, 1, 0)}, "split", "ratio-test")
    policy = ActorGroup("policy", PolicyWorker, slots["policy"], "gloo")
    try:
        lora = LoRAConfig(enabled=True, rank=4, alpha=8.0, dropout=0.5)
        ray.get(policy.async_run("setup", ModelSpec(path=str(tiny_checkpoint)),
                                 OptimConfig(lr=0.05, warmup_ratio=0.0, micro_batch_size=2, gradient_accumulation_steps=2),
                                 ScaleConfig(num_workers=1, zero_stage=2), 10, lora=lora))
        prompts = [tokenizer("[human]:头痛怎么办\n[bot]:")["input_ids"], tokenizer("[human]:发烧了\n[bot]:")["input_ids"]] * 2
        answers = ray.get(policy.async_run("generate", prompts, SamplingParams(max_new_tokens=10, seed=0)))[0]
        batch = build_rollout_batch(prompts, answers, [0, 1, 0, 1], tokenizer.pad_token_id, eos_token_ids(tokenizer))

        def update(spec: PolicyLossSpec, reference=None) -> dict:
            old = concat_rows(ray.get(policy.async_run("logprobs", batch)))
            experience = Experience(batch.sequences, batch.attention_mask, batch.response_mask, batch.group_ids,
                                    old_logprobs=old, advantages=batch.response_mask.float(),
                                    reference_logprobs=reference)
            return ray.get(policy.async_run("train_step", experience, spec))[0]

        # LoRA's B starts at 0, so dropout on its input is invisible until B has moved: train once.
        update(PolicyLossSpec(mini_batch_size=4, micro_batch_size=2))
        # Now one minibatch = the whole shard: both micro-batches run before the optimizer step, so
        # train-mode log-probs must equal the eval-mode old ones (dropout 0.5 would make them differ).
        first = update(PolicyLossSpec(mini_batch_size=4, micro_batch_size=2))
        assert abs(first["approx_kl"]) < 1e-5, first
        assert first["clip_fraction"] == 0.0

        # KL in the loss: with the reference far below the policy on every sampled token, a large
        # kl_coef and no advantage, the update lowers the policy's log-probs toward the reference.
        reference = concat_rows(ray.get(policy.async_run("logprobs", batch))) - 2.0
        before = concat_rows(ray.get(policy.async_run("logprobs", batch)))
        experience = Experience(batch.sequences, batch.attention_mask, batch.response_mask, batch.group_ids,
                                old_logprobs=before, advantages=torch.zeros_like(before),
                                reference_logprobs=reference)
        stats = ray.get(policy.async_run("train_step", experience,
                                         PolicyLossSpec(mini_batch_size=4, micro_batch_size=2, kl_coef=1.0)))[0]
        after = concat_rows(ray.get(policy.async_run("logprobs", batch)))
        mask = batch.response_mask.bool()
        assert stats["kl_loss"] > 0.5  # k3 at log r = 2: e^-2 - 1 + 2 = 1.135
        assert float((after - before)[mask].mean()) < -0.01
    finally:
        policy.shutdown()
        release(slots)
