"""The critic-free estimators (GRPO, RLOO, REINFORCE++) and LoRA PPO, end to end on CPU.

* each estimator raises the `token_parity` rule reward on the colocated placement, with no
  critic group started (the driver's `start_groups` is wrapped to see which groups exist);
* a LoRA policy trains only its adapters, feeds a separate engine the merged weights, and saves
  a merged HF checkpoint plus `adapter/`.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "rollout.max_prompt_length=64"]


def ppo_config(rlhf, yaml: str, overrides: list[str]):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig

    return load_config(PPOConfig, rlhf.config_path(yaml), COMMON + overrides)


@pytest.fixture
def started_groups(monkeypatch) -> list:
    """Every `PPOGroups` the driver starts during the test."""
    import chimed_ray.trainers.ppo as ppo

    started, original = [], ppo.start_groups

    def recording(config):
        started.append(original(config))
        return started[-1]

    monkeypatch.setattr(ppo, "start_groups", recording)
    return started


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimator_learns_a_rule_reward(estimator, ray_cluster, tiny_checkpoint, tmp_path, rlhf,
                                                    started_groups):
    """The reward pays for odd token ids (a random policy scores ~0.5)."""
    from chimed_ray.trainers.ppo import run_ppo

    output = tmp_path / estimator
    steps = 12
    config = ppo_config(rlhf, "ppo/tiny_colocate.yaml", [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        f"algorithm.advantage_estimator={estimator}", f"total_steps={steps}", "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12", "algorithm.mini_batch_size=8",
        "algorithm.ppo_epochs=2", "algorithm.kl_coef=0.0", "optim.lr=3e-2", f"logging.save_every={steps}",
    ])
    assert not config.algorithm.needs_critic
    final = run_ppo(config)

    (groups,) = started_groups
    assert groups.critic is None
    rewards = [m["reward/mean"] for _, m in sorted(rlhf.metrics_by_step(output).items())]
    assert len(rewards) == steps
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    assert not (output / "critic").exists()
    rlhf.assert_every_tensor_changed(tiny_checkpoint, final)


def test_lora_policy_trains_adapters_only_and_saves_a_merged_checkpoint(ray_cluster, tiny_checkpoint, tmp_path, rlhf):
    """GRPO with a LoRA policy generating on a separate engine fed merged weights every step: the
    adapters alone land in `adapter/`, and the merged final model loads with plain transformers and
    differs from the start in the adapted projections only (every other base weight stayed frozen)."""
    import torch
    from transformers import AutoModelForCausalLM

    from chimed_ray.trainers.ppo import run_ppo

    output = tmp_path / "lora"
    config = ppo_config(rlhf, "ppo/tiny.yaml", [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=", f"reward.function={rlhf.rule_reward}",
        "algorithm.advantage_estimator=grpo", "rollout.separate_engine=true", "scale.rollout.num_workers=1",
        "scale.policy.num_workers=1", "total_steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=8", "algorithm.mini_batch_size=8", "optim.lr=1e-2", "model.lora.enabled=true",
        "model.lora.rank=4", "model.lora.dropout=0.0", "model.lora.target_modules=[q_proj,v_proj]",
    ])
    final = run_ppo(config)

    metrics = rlhf.metrics_by_step(output)
    assert all(m["sync/megabytes"] > 0 for m in metrics.values())
    adapter = rlhf.load_weights(final / "adapter")
    assert adapter and all(".lora_" in name for name in adapter), sorted(adapter)
    # LoRA's B starts at zero, so a trained adapter has non-zero B matrices.
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if ".lora_B." in name)

    before, after = rlhf.load_weights(tiny_checkpoint), rlhf.load_weights(final)
    assert sorted(before) == sorted(after)  # base names, no peft wrappers
    adapted = ("q_proj.weight", "v_proj.weight")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.endswith(adapted)}, sorted(changed)

    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert torch.equal(model.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                       after["model.layers.0.self_attn.q_proj.weight"])
