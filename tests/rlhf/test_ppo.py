"""PPO on Ray actor groups, end to end on CPU with tiny models.

* split placement, all four roles as their own groups, reward model + GAE critic; checkpoints,
  then a resumed run that continues the step count from the restored policy;
* colocated placement learning a rule reward (the honest check that PPO optimises anything);
* GRPO without a critic group, generating on a separate engine that receives weights every step.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

COMMON = ["logging.progress_bar=false", "rollout.max_prompt_length=64"]


def ppo_config(rlhf, yaml: str, overrides: list[str]):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig

    return load_config(PPOConfig, rlhf.config_path(yaml), COMMON + overrides)


def test_split_groups_checkpoint_and_resume(ray_cluster, tiny_checkpoint, trained_reward_model, tmp_path, rlhf):
    from chimed_ray.trainers.ppo import run_ppo

    output = tmp_path / "ppo"
    base = [f"output_dir={output}", f"model.path={tiny_checkpoint}", f"reward.path={trained_reward_model}",
            "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12",
            "algorithm.mini_batch_size=4", "algorithm.ppo_epochs=2", "optim.lr=1e-3", "critic_optim.micro_batch_size=2",
            "logging.save_every=2"]
    final = run_ppo(ppo_config(rlhf, "ppo/tiny.yaml", base + ["total_steps=3"]))

    metrics = rlhf.metrics_by_step(output)
    assert sorted(metrics) == [1, 2, 3]
    for step in metrics.values():
        for key in ("reward/mean", "reward/std", "kl/per_token", "train/clip_fraction", "train/entropy",
                    "train/value_loss", "response/length", "time/generate_s", "time/score_s", "time/train_s",
                    "time/sync_s", "throughput/generate_tokens_per_s", "throughput/train_tokens_per_s"):
            assert key in step, key
    checkpoints = output / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000003"
    assert {p.name for p in checkpoints.glob("step_*")} == {"step_000002", "step_000003"}
    state = json.loads((checkpoints / "step_000003" / "driver_state.json").read_text())
    assert state["step"] == 3 and state["prompt_position"] == 12
    assert (checkpoints / "step_000003" / "critic").is_dir()
    rlhf.assert_every_tensor_changed(tiny_checkpoint, final)
    rlhf.assert_every_tensor_changed(trained_reward_model, output / "critic")
    assert any((output / "tensorboard").iterdir())

    run_ppo(ppo_config(rlhf, "ppo/tiny.yaml", base + ["total_steps=5", "resume=true"]))
    metrics = rlhf.metrics_by_step(output)
    assert sorted(metrics) == [1, 2, 3, 4, 5]
    # A fresh policy equals the reference (KL exactly 0); a restored trained one does not.
    assert metrics[4]["kl/per_token"] != 0.0
    assert json.loads((checkpoints / "step_000005" / "driver_state.json").read_text())["prompt_position"] == 20


def test_colocated_ppo_learns_a_rule_reward(ray_cluster, tiny_checkpoint, tmp_path, rlhf):
    """All four roles share two bundles; the reward pays for odd token ids (random policy ~0.5)."""
    from chimed_ray.trainers.ppo import run_ppo

    output = tmp_path / "ppo_colocate"
    config = ppo_config(rlhf, "ppo/tiny_colocate.yaml", [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        "total_steps=20", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=16",
        "algorithm.mini_batch_size=8", "algorithm.ppo_epochs=2", "algorithm.kl_coef=0.0",
        "optim.lr=1e-2", "critic_optim.lr=1e-3", "logging.save_every=10",
    ])
    final = run_ppo(config)

    rewards = [m["reward/mean"] for _, m in sorted(rlhf.metrics_by_step(output).items())]
    assert len(rewards) == 20
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    assert {p.name for p in (output / "checkpoints").glob("step_*")} == {"step_000010", "step_000020"}
    rlhf.assert_every_tensor_changed(tiny_checkpoint, final)


def test_grpo_runs_without_critic_on_a_separate_engine(ray_cluster, tiny_checkpoint, tmp_path, rlhf):
    from chimed_ray.trainers.ppo import run_ppo

    output = tmp_path / "grpo"
    config = ppo_config(rlhf, "ppo/tiny.yaml", [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        "algorithm.advantage_estimator=grpo", "rollout.separate_engine=true", "scale.rollout.num_workers=1",
        "scale.policy.num_workers=1", "total_steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=8", "algorithm.mini_batch_size=8",
    ])
    assert not config.algorithm.needs_critic
    run_ppo(config)

    metrics = rlhf.metrics_by_step(output)
    assert sorted(metrics) == [1, 2]
    assert all(m["sync/megabytes"] > 0 for m in metrics.values())  # weights pushed after every update
    assert not any("value_loss" in key for key in metrics[1])
    assert not (output / "checkpoints" / "step_000002" / "critic").exists()
    assert not (output / "critic").exists()


def test_roles_that_do_not_fit_the_cluster_fail_before_any_actor_starts(ray_cluster, rlhf):
    from chimed_ray.config import ConfigError
    from chimed_ray.distributed.placement import RoleResources, plan_slots

    with pytest.raises(ConfigError, match=r"scale: the roles need 64 CPUs \(policy 32, critic 32\)"):
        plan_slots({"policy": RoleResources(8, 4, 0), "critic": RoleResources(8, 4, 0)}, "split", "too-big")
    names = [group["name"] for group in ray_cluster.util.placement_group_table().values()]
    assert not any(name.startswith("too-big") for name in names)
