"""The translation table: each estimator, each placement, LoRA and KL modes map to the OpenRLHF
flags we mean, and each setting OpenRLHF cannot express is refused in one line naming our key."""

from __future__ import annotations

import pytest

from chimed_ray.config import ConfigError


@pytest.mark.parametrize("overrides, estimator", [
    ((), "gae"),
    (("algorithm.advantage_estimator=reinforce_pp",), "reinforce"),
    (("algorithm.advantage_estimator=rloo",), "rloo"),
    (("algorithm.advantage_estimator=grpo",), "group_norm"),
    (("algorithm.advantage_estimator=grpo", "algorithm.norm_by_std=false"), "dr_grpo"),
    (("algorithm.advantage_estimator=reinforce_pp_baseline",), "reinforce_baseline"),
])
def test_each_estimator(translated, flags_of, overrides, estimator):
    flags = flags_of(translated(*overrides).argv)
    assert flags["--algo.advantage.estimator"] == [estimator]
    critic = estimator == "gae"
    assert ("--critic.model_name_or_path" in flags) == critic
    assert ("--critic.adam.lr" in flags) == critic and ("--critic.num_gpus_per_node" in flags) == critic
    if critic:
        assert flags["--critic.model_name_or_path"] == ["/mnt/shared/chimed/reward/final"]  # our default: the RM
        assert flags["--critic.value_clip"] == ["0.2"] and flags["--critic.adam.lr"] == ["9e-06"]


def test_split_with_separate_vllm_engines_keeps_every_roles_gpus(translated, flags_of):
    translation = translated("rollout.engine=vllm", "rollout.separate_engine=true", "scale.rollout.num_workers=4",
                             "scale.rollout.gpus_per_worker=2")
    flags = flags_of(translation.argv)
    assert flags["--vllm.num_engines"] == ["4"] and flags["--vllm.tensor_parallel_size"] == ["2"]
    assert [flags[f"--{role}.num_gpus_per_node"] for role in ("actor", "critic", "ref", "reward")] == [["8"], ["4"], ["2"], ["2"]]
    assert not {"--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"} & set(flags)
    assert flags["--vllm.sync_backend"] == ["nccl"] and translation.notes == ["OpenRLHF's critic shares the policy's "
                                                                              "micro batch: 4 per GPU, not critic_optim.micro_batch_size=8"]


def test_split_with_in_policy_generation_becomes_the_hybrid_engine(translated, flags_of):
    translation = translated()  # gpu_13b: the policy generates on its own 8 GPUs
    flags = flags_of(translation.argv)
    assert {"--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"} <= set(flags)
    assert flags["--vllm.num_engines"] == ["8"] and flags["--ref.num_gpus_per_node"] == ["8"]
    assert any("hybrid engine" in note for note in translation.notes)
    assert any("reference on 8 GPUs, not 2" in note for note in translation.notes)


def test_colocate(translated, flags_of):
    fractions = [f"scale.{role}.gpus_per_worker=0.2" for role in ("policy", "critic", "reference", "reward", "rollout")]
    counts = [f"scale.{role}.num_workers=4" for role in ("policy", "critic", "reference", "reward")]
    common = ("scale.placement=colocate", *fractions, *counts, "algorithm.mini_batch_size=64", "rollout.prompts_per_step=64")
    flags = flags_of(translated(*common).argv)
    assert {"--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"} <= set(flags)
    assert flags["--actor.num_gpus_per_node"] == ["4"] and flags["--vllm.num_engines"] == ["4"]
    kept_awake = flags_of(translated(*common, "scale.offload_idle=false").argv)
    assert "--train.colocate_all" in kept_awake and "--vllm.enable_sleep" not in kept_awake
    engines = ("rollout.engine=vllm", "rollout.separate_engine=true")
    flags = flags_of(translated(*common, *engines, "scale.rollout.num_workers=4").argv)
    assert flags["--vllm.num_engines"] == ["4"] and flags["--vllm.tensor_parallel_size"] == ["1"]
    with pytest.raises(ConfigError, match=r"^scale\.rollout\.num_workers: 2 .*cover the policy's 4 GPUs"):
        translated(*common, *engines, "scale.rollout.num_workers=2")


def test_roles_spread_over_whole_nodes(translated, flags_of):
    flags = flags_of(translated("scale.policy.num_workers=16", "algorithm.mini_batch_size=128").argv)
    assert flags["--actor.num_nodes"] == ["2"] and flags["--actor.num_gpus_per_node"] == ["8"]
    flags = flags_of(translated("scale.policy.num_workers=16", gpus_per_node=16).argv)
    assert flags["--actor.num_nodes"] == ["1"] and flags["--actor.num_gpus_per_node"] == ["16"]
    with pytest.raises(ConfigError, match=r"^scale\.policy\.num_workers: 12 .*whole nodes of 8 GPUs"):
        translated("scale.policy.num_workers=12", "rollout.prompts_per_step=96", "algorithm.mini_batch_size=96")


def test_lora_kl_and_clipping(translated, flags_of):
    flags = flags_of(translated("model.lora.enabled=true", "model.lora.rank=16", "model.lora.alpha=32",
                                "model.lora.target_modules=[q_proj,v_proj]").argv)
    assert flags["--ds.lora.rank"] == ["16"] and flags["--ds.lora.alpha"] == ["32"]
    assert flags["--ds.lora.target_modules"] == ["q_proj", "v_proj"] and flags["--ds.lora.dropout"] == ["0.0"]
    assert "--ds.lora.rank" not in flags_of(translated().argv)
    flags = flags_of(translated("algorithm.advantage_estimator=grpo", "algorithm.kl_in_loss=true", "algorithm.kl_target=0",
                                "algorithm.kl_coef=0.001", "algorithm.dual_clip=3", "algorithm.clip_eps_high=0.28").argv)
    assert "--algo.kl.use_loss" in flags and flags["--algo.kl.estimator"] == ["k3"]
    assert flags["--algo.kl.init_coef"] == ["0.001"] and "--algo.kl.target" not in flags
    assert flags["--actor.dual_clip"] == ["3.0"] and flags["--actor.eps_clip_low_high"] == ["0.2", "0.28"]
    flags = flags_of(translated().argv)
    assert "--algo.kl.use_loss" not in flags and flags["--algo.kl.target"] == ["6.0"] and "--actor.dual_clip" not in flags


def test_batches_lengths_and_learning_rates(translated, flags_of):
    flags = flags_of(translated().argv)
    expected = {"--rollout.batch_size": "128", "--rollout.n_samples_per_prompt": "4", "--train.batch_size": "128",
                "--train.micro_batch_size": "4", "--data.max_len": "2048", "--rollout.max_new_tokens": "1024",
                "--data.max_samples": str(1000 * 128), "--train.num_episodes": "1", "--actor.adam.lr": "5e-07",
                "--ds.zero_stage": "3", "--ds.param_dtype": "bf16"}
    assert {flag: flags[flag][0] for flag in expected} == expected
    assert "--actor.gradient_checkpointing_enable" in flags and "--data.apply_chat_template" in flags


REFUSALS = [
    (("reward.path=", "reward.function=pkg.mod:fn"), "reward.function"),
    (("scale.use_gpu=false", "scale.precision=auto"), "scale.use_gpu"),
    (("scale.precision=fp32",), "scale.precision"),
    (("scale.offload_params=true",), "scale.offload_params"),
    (("rollout.top_k=50",), "rollout.top_k"),
    (("rollout.weight_sync=object_store",), "rollout.weight_sync"),
    (("model.lora.enabled=true", "rollout.lora_sync=adapter"), "rollout.lora_sync"),
    (("algorithm.kl_estimator=abs",), "algorithm.kl_estimator"),
    (("algorithm.agg_mode=seq_mean_token_sum",), "algorithm.agg_mode"),
    (("algorithm.whiten_advantages=false",), "algorithm.whiten_advantages"),
    (("algorithm.advantage_estimator=reinforce_pp_baseline", "algorithm.gamma=0.9"), "algorithm.gamma"),
    (("algorithm.value_clip=0",), "algorithm.value_clip"),
    (("model.lora.enabled=true", "model.lora.alpha=12.5"), "model.lora.alpha"),
    (("fault.kill_at_step=3",), "fault.kill_at_step"),
    (("model.path=",), "model.path"),
    (("scale.policy.gpus_per_worker=2",), "scale.policy.gpus_per_worker"),
    (("rollout.separate_engine=true", "scale.rollout.num_workers=2", "scale.rollout.gpus_per_worker=1.5"),
     "scale.rollout.gpus_per_worker"),
    (("scale.critic.num_workers=16", "critic_optim.micro_batch_size=4", "algorithm.mini_batch_size=128"),
     "scale.critic.num_workers"),
]


@pytest.mark.parametrize("overrides, key", REFUSALS, ids=[key for _, key in REFUSALS])
def test_each_refusal_is_one_line_naming_the_key(translated, overrides, key):
    with pytest.raises(ConfigError) as caught:
        translated(*overrides)
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "\n" not in message and "OpenRLHF" in message


def test_grpo_and_whitening_off_is_fine_because_group_estimators_are_not_whitened(translated, flags_of):
    flags = flags_of(translated("algorithm.advantage_estimator=grpo", "algorithm.whiten_advantages=false").argv)
    assert flags["--algo.advantage.estimator"] == ["group_norm"]


def test_dry_run_belongs_to_the_openrlhf_engine(capsys):
    from pathlib import Path

    from chimed_ray.cli import main

    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "ppo" / "tiny.yaml")
    assert main(["ppo", "--config", tiny, "--dry-run"]) == 2
    assert "--dry-run: only engine=openrlhf" in capsys.readouterr().err
