"""ZeRO-3 PPO and colocation on CPU with real Ray and tiny models.

* generation under ZeRO-3 never hangs when the ranks' answers end at different lengths;
* greedy generation in micro-batches equals one batch;
* colocated roles take turns: between phases their states live in host copies (the device
  storages are freed), and come back bit-identical;
* PPO with policy x2 and critic x2 under ZeRO-3, colocated with offload, raises a rule reward with
  a KL penalty and lr 1e-3, and its first steps match the same run with split placement.
"""

from __future__ import annotations

import sys

import pytest
import torch

from chimed_ray.distributed.policy import PolicyWorker

pytestmark = pytest.mark.slow

COMMON = ["logging.progress_bar=false", "rollout.max_prompt_length=64", "logging.tensorboard=false"]
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


def ppo_config(rlhf, yaml: str, overrides: list[str]):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig

    return load_config(PPOConfig, rlhf.config_path(yaml), COMMON + overrides)


class UnevenPolicy(PolicyWorker):
    """Rank 0 treats every token as EOS, so its answers stop after one token; rank 1 runs on to
    `max_new_tokens`. Under ZeRO-3 with live gather hooks, rank 1 would wait for rank 0 forever."""

    def generate(self, prompts, params):
        if self.rank == 0:
            self.rollout.eos_token_ids = list(range(len(self.tokenizer)))
        return super().generate(prompts, params)


@pytest.mark.timeout(600)
def test_zero3_generation_with_uneven_lengths_does_not_hang(ray_cluster, tiny_checkpoint, rlhf):
    import ray.cloudpickle

    from chimed_ray.distributed.group import ActorGroup, gather
    from chimed_ray.distributed.placement import RoleResources, plan_slots, release
    from chimed_ray.rollout.base import SamplingParams
    from chimed_ray.trainers.ppo_groups import role_optim, trainable_spec

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable by workers
    config = ppo_config(rlhf, "ppo/tiny_colocate.yaml", [f"model.path={tiny_checkpoint}", "scale.zero_stage=3"])
    slots = plan_slots({"policy": RoleResources(2, 0.5, 0)}, "split", "uneven-generation")
    group = ActorGroup("policy", UnevenPolicy, slots["policy"], "gloo")
    try:
        spec = trainable_spec(config, "policy", str(tiny_checkpoint), str(tiny_checkpoint))
        assert spec.zero3
        gather(group.ready + group.async_run("setup", spec, role_optim(config, "policy"),
                                             config.scale.deepspeed_scale(config.scale.policy), 1, 1))
        parts = gather(group.async_run_sharded("generate", PROMPTS, SamplingParams(max_new_tokens=10, greedy=True)))
    finally:
        group.shutdown()
        release(slots)
    assert [len(answer) for answer in parts[0]] == [1, 1]
    assert max(len(answer) for answer in parts[1]) > 1


def test_micro_batched_greedy_generation_equals_one_batch(tokenizer):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm
    from chimed_ray.rollout.base import SamplingParams
    from chimed_ray.rollout.hf_engine import HFEngine

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=3).eval()
    prompts = PROMPTS + [[20, 21, 22, 23, 24, 25], [30, 31]]
    params = SamplingParams(max_new_tokens=12, greedy=True)
    whole = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id).generate(prompts, params)
    for batch_size in (1, 4):
        engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id, batch_size=batch_size)
        assert engine.generate(prompts, params) == whole
    assert all(len(answer) > 1 for answer in whole)


def test_colocated_roles_leave_the_device_between_phases(ray_cluster, tiny_checkpoint, tokenizer, rlhf):
    from chimed_ray.distributed.batch import Experience, build_rollout_batch
    from chimed_ray.distributed.group import gather
    from chimed_ray.distributed.offload import Turns
    from chimed_ray.distributed.policy import PolicyLossSpec
    from chimed_ray.rollout.base import SamplingParams
    from chimed_ray.trainers.ppo_groups import start_groups

    config = ppo_config(rlhf, "ppo/tiny_colocate.yaml", [
        f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        "scale.zero_stage=3", "scale.frozen_zero3=true", "run_name=offload-test",
    ])
    assert config.scale.offload_idle_models
    groups = start_groups(config)
    try:
        models = {"policy": groups.policy, "critic": groups.critic, "reference": groups.reference}
        for role, group in models.items():  # after setup, every model waits off the device
            for rank, resident in enumerate(group.run("resident_bytes")):
                assert resident["weights"] == resident["optimizer"] == 0 and resident["host"] > 0, (role, rank, resident)

        turns = Turns(enabled=True)
        parts = gather(turns.run(groups.policy, "generate", PROMPTS, SamplingParams(max_new_tokens=6, seed=1)))
        rollout = build_rollout_batch(PROMPTS, [a for part in parts for a in part], [0, 1, 2, 3],
                                      tokenizer.pad_token_id, [tokenizer.eos_token_id])
        with turns.holding(groups.reference, "weights"):  # scoring: the reference alone is on the device
            assert all(r["weights"] > 0 for r in groups.reference.run("resident_bytes"))
            assert all(r["weights"] == r["optimizer"] == 0 for r in groups.policy.run("resident_bytes"))
            assert all(r["weights"] == r["optimizer"] == 0 for r in groups.critic.run("resident_bytes"))

        old_logprobs = torch.cat(gather(turns.run(groups.policy, "logprobs", rollout)))
        experience = Experience(rollout.sequences, rollout.attention_mask, rollout.response_mask, rollout.group_ids,
                                old_logprobs=old_logprobs, advantages=torch.ones_like(old_logprobs))
        with turns.holding(groups.policy, "all"):  # training brings the optimizer states back too
            gather(groups.policy.async_run_sharded("train_step", experience, PolicyLossSpec(mini_batch_size=2, micro_batch_size=1)))
            held = groups.policy.run("resident_bytes")
            digests = groups.policy.run("states_digest")
        assert all(r["weights"] > 0 and r["optimizer"] > 0 and r["host"] == 0 for r in held), held
        turns.settle()  # the offload queued on leaving the block raised nothing
        away = groups.policy.run("resident_bytes")
        for before, after in zip(held, away):
            assert after["weights"] == after["optimizer"] == 0, (held, away)
            assert after["host"] == before["weights"] + before["optimizer"], (held, away)
        with turns.holding(groups.policy, "all"):
            assert groups.policy.run("states_digest") == digests  # bit-identical round trip
    finally:
        groups.shutdown()


@pytest.mark.timeout(1500)
def test_zero3_colocated_ppo_learns_and_matches_split(ray_cluster, tiny_checkpoint, tmp_path, rlhf):
    """Policy x2 and critic x2 under ZeRO-3, all roles colocated and taking turns on the device.

    The random tiny policy is near-uniform over 6,000 tokens (entropy ~ln 6000); sampling at
    temperature 0.1 (also used for the log-probs) sharpens it as SFT would, so lr 1e-3 moves it as
    fast as lr 1e-2 moves the temperature-1 policy of the ZeRO-2 colocated test."""
    from chimed_ray.trainers.ppo import run_ppo

    common = [
        f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}", "scale.zero_stage=3",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=16", "rollout.temperature=0.1",
        "rollout.generation_batch_size=4", "rollout.forward_batch_size=4", "algorithm.mini_batch_size=8",
        "algorithm.ppo_epochs=2", "algorithm.kl_coef=0.01", "optim.lr=1e-3", "critic_optim.lr=1e-3",
        "logging.save_every=0",
    ]
    colocated = tmp_path / "colocated"
    final = run_ppo(ppo_config(rlhf, "ppo/tiny_colocate.yaml", common + [f"output_dir={colocated}", "total_steps=24"]))
    metrics = rlhf.metrics_by_step(colocated)
    rewards = [m["reward/mean"] for _, m in sorted(metrics.items())]
    assert len(rewards) == 24
    # A random policy scores ~0.5 with a step-to-step noise of ~0.03; six-step means damp it.
    assert sum(rewards[-6:]) / 6 > sum(rewards[:6]) / 6 + 0.05, rewards
    assert metrics[24]["kl/per_token"] > 0
    rlhf.assert_every_tensor_changed(tiny_checkpoint, final)

    split = tmp_path / "split"
    run_ppo(ppo_config(rlhf, "ppo/tiny_colocate.yaml", common + [
        f"output_dir={split}", "total_steps=2", "scale.placement=split", "run_name=ppo_split"]))
    for step, split_metrics in rlhf.metrics_by_step(split).items():
        for key in ("reward/mean", "kl/per_token", "train/policy_loss", "train/value_loss", "train/approx_kl"):
            assert split_metrics[key] == pytest.approx(metrics[step][key], rel=1e-4, abs=1e-6), (step, key)
