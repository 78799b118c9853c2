"""Our `PPOConfig` as OpenRLHF's `python -m openrlhf.cli.train_ppo_ray` command line (the pinned
`OPENRLHF_VERSION`; its flag names and arities are checked against that version's own argparse
definitions by tests/openrlhf/test_flags.py).

A setting OpenRLHF cannot express is refused with one line naming our key, never dropped.
Pure: no I/O, no Ray, no openrlhf import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from chimed_ray.config.loader import ConfigError
from chimed_ray.config.rlhf import PPOConfig

OPENRLHF_VERSION = "0.11.2"
ENTRYPOINT = ("python", "-m", "openrlhf.cli.train_ppo_ray")
GPUS_PER_NODE = 8  # assumed node size for a dry run; a real submission reads it from the cluster

# Our advantage estimators -> OpenRLHF's `--algo.advantage.estimator` (grpo splits on norm_by_std).
ESTIMATORS = {"gae": "gae", "reinforce_pp": "reinforce", "rloo": "rloo", "reinforce_pp_baseline": "reinforce_baseline"}
AGG_MODES = {"token_mean": "token-mean", "seq_mean_token_mean": "seq-mean-token-mean"}
WHITENED = ("gae", "reinforce_pp", "reinforce_pp_baseline")  # OpenRLHF always whitens these

Value = Union[None, str, int, float, list]


@dataclass(frozen=True)
class Handover:
    """What the command points at: files chimed-ray prepared on storage every node can read."""

    actor_dir: str  # the SFT model with the ChiMed chat template in its tokenizer
    prompts_file: str  # OpenRLHF-format prompts (`{"input": [messages]}` per line)
    work_dir: str  # OpenRLHF's checkpoints and its final HF save


@dataclass(frozen=True)
class Translation:
    """The command and the notes a user should read (placement decisions OpenRLHF forces)."""

    argv: list[str]
    notes: list[str]


def refuse(key: str, value: object, reason: str) -> ConfigError:
    return ConfigError(f"{key}: {value!r} has no OpenRLHF {OPENRLHF_VERSION} equivalent (engine=openrlhf); {reason}")


def translate(config: PPOConfig, handover: Handover, gpus_per_node: int = GPUS_PER_NODE) -> Translation:
    """The full command for `config`; raises ConfigError naming the first key OpenRLHF cannot express."""
    check_translatable(config)
    placement, notes = placement_flags(config, gpus_per_node)
    flags: dict[str, Value] = {
        **model_flags(config, handover), **placement, **algorithm_flags(config), **batch_flags(config),
        **optimizer_flags(config), **lora_flags(config), **output_flags(config, handover),
    }
    return Translation(list(ENTRYPOINT) + render(flags), notes)


def render(flags: dict[str, Value]) -> list[str]:
    """`{name: value}` as argv: None is a store_true switch, a list is nargs values."""
    argv: list[str] = []
    for name, value in flags.items():
        argv.append(f"--{name}")
        values = value if isinstance(value, list) else [] if value is None else [value]
        argv += [format_value(item) for item in values]
    return argv


def format_value(value: object) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def check_translatable(config: PPOConfig) -> None:
    """Raise for the first setting OpenRLHF has no flag for."""
    algo, rollout, scale = config.algorithm, config.rollout, config.scale
    refusals = [
        (not config.model.path, "model.path", config.model.path, "OpenRLHF loads an HF checkpoint; a tiny model built from config has none"),
        (bool(config.reward.function), "reward.function", config.reward.function,
         "OpenRLHF scores with a reward model (reward.path) or an HTTP server, not a Python function"),
        (not scale.use_gpu, "scale.use_gpu", scale.use_gpu, "OpenRLHF trains on GPUs only"),
        (scale.precision == "fp32", "scale.precision", scale.precision, "OpenRLHF trains in bf16 or fp16"),
        (scale.offload_params, "scale.offload_params", scale.offload_params, "OpenRLHF offloads Adam states only (scale.offload_optimizer)"),
        (rollout.top_k != 0, "rollout.top_k", rollout.top_k, "OpenRLHF samples with temperature and top_p only"),
        (rollout.weight_sync == "object_store", "rollout.weight_sync", rollout.weight_sync, "OpenRLHF syncs vLLM over NCCL"),
        (rollout.lora_sync == "adapter", "rollout.lora_sync", rollout.lora_sync, "OpenRLHF sends merged LoRA weights to vLLM"),
        (algo.kl_estimator == "abs", "algorithm.kl_estimator", algo.kl_estimator, "OpenRLHF has k1, k2 and k3"),
        (algo.agg_mode not in AGG_MODES, "algorithm.agg_mode", algo.agg_mode, f"OpenRLHF has {sorted(AGG_MODES)}"),
        (not algo.whiten_advantages and algo.advantage_estimator in WHITENED, "algorithm.whiten_advantages",
         algo.whiten_advantages, f"OpenRLHF always whitens {algo.advantage_estimator} advantages"),
        (algo.advantage_estimator == "reinforce_pp_baseline" and algo.gamma != 1.0, "algorithm.gamma", algo.gamma,
         "OpenRLHF's reinforce_baseline resets gamma to 1"),
        (algo.needs_critic and algo.value_clip == 0, "algorithm.value_clip", algo.value_clip, "OpenRLHF always clips values; set > 0"),
        (config.model.lora.enabled and not float(config.model.lora.alpha).is_integer(), "model.lora.alpha",
         config.model.lora.alpha, "OpenRLHF takes an integer LoRA alpha"),
        (config.fault.kill_at_step > 0, "fault.kill_at_step", config.fault.kill_at_step, "fault drills are for our engine"),
    ]
    for refused, key, value, reason in refusals:
        if refused:
            raise refuse(key, value, reason)
    estimator = algo.advantage_estimator
    if estimator not in ESTIMATORS and estimator != "grpo":
        raise refuse("algorithm.advantage_estimator", estimator, f"OpenRLHF has {sorted(ESTIMATORS) + ['grpo']}")


def nodes_of(count: int, gpus_per_node: int, key: str) -> tuple[int, int]:
    """`(num_nodes, num_gpus_per_node)` for a role of `count` GPUs: OpenRLHF fills whole nodes."""
    if count <= gpus_per_node:
        return 1, count
    if count % gpus_per_node:
        raise refuse(key, count, f"OpenRLHF spreads a role over whole nodes of {gpus_per_node} GPUs; use a multiple")
    return count // gpus_per_node, gpus_per_node


# OpenRLHF's role prefixes -> our `scale.<role>` groups.
ROLES = {"actor": "policy", "critic": "critic", "ref": "reference", "reward": "reward"}


def placement_flags(config: PPOConfig, gpus_per_node: int) -> tuple[dict[str, Value], list[str]]:
    """Roles' GPU counts, colocation and the vLLM engines.

    OpenRLHF 0.11 generates with vLLM only. A separate rollout group becomes vLLM engines on their
    own GPUs (tensor parallel = `scale.rollout.gpus_per_worker`). Generation on the policy's own
    GPUs becomes OpenRLHF's hybrid engine: vLLM and every role on the policy's GPUs
    (`--train.colocate_all`), vLLM and DeepSpeed sleeping while the other works.
    """
    scale, rollout = config.scale, config.rollout
    hybrid = scale.placement == "colocate" or not rollout.separate_engine
    counts, notes = role_gpus(config, hybrid)
    engines, tensor_parallel = vllm_engines(config, hybrid)
    flags: dict[str, Value] = {}
    for role, count in counts.items():
        key = f"scale.{ROLES[role]}.num_workers"
        flags[f"{role}.num_nodes"], flags[f"{role}.num_gpus_per_node"] = nodes_of(count, gpus_per_node, key)
    flags.update({"vllm.num_engines": engines, "vllm.tensor_parallel_size": tensor_parallel, "vllm.sync_backend": "nccl",
                  "vllm.gpu_memory_utilization": rollout.vllm_gpu_memory_utilization})
    if hybrid:
        flags["train.colocate_all"] = None
        # Idle models leave the GPUs unless offload_idle=false: everything shares them here.
        if scale.offload_idle is not False and not rollout.async_:
            flags.update({"vllm.enable_sleep": None, "ds.enable_sleep": None})
    if rollout.async_:
        flags["train.async_enable"] = None
    return flags, notes


def role_gpus(config: PPOConfig, hybrid: bool) -> tuple[dict[str, int], list[str]]:
    """GPUs of each OpenRLHF role (the critic only with GAE), and notes on what OpenRLHF forces."""
    scale, needs_critic = config.scale, config.algorithm.needs_critic
    counts = {role: getattr(scale, ours).num_workers for role, ours in ROLES.items() if role != "critic" or needs_critic}
    policy, notes = counts["actor"], []
    if scale.placement == "split":
        for role, ours in ROLES.items():
            gpus = getattr(scale, ours).gpus_per_worker
            if role in counts and gpus != 1:
                raise refuse(f"scale.{ours}.gpus_per_worker", gpus, "OpenRLHF gives each split role one GPU per worker")
    if needs_critic and config.critic_optim.micro_batch_size != config.optim.micro_batch_size:
        # A memory/speed knob only: gradients still accumulate to the same mini batch.
        notes.append(f"OpenRLHF's critic shares the policy's micro batch: {config.optim.micro_batch_size} per GPU, "
                     f"not critic_optim.micro_batch_size={config.critic_optim.micro_batch_size}")
    if not hybrid:
        return counts, notes
    for role in ("critic", "reward"):
        if counts.get(role, 0) > policy:
            raise refuse(f"scale.{ROLES[role]}.num_workers", counts[role],
                         f"in OpenRLHF's hybrid engine every role shares the policy's {policy} GPUs")
    if config.algorithm.kl_coef > 0 and counts["ref"] != policy:
        notes.append(f"OpenRLHF colocates the reference with the policy: reference on {policy} GPUs, not {counts['ref']}")
        counts["ref"] = policy
    if scale.placement == "split":
        notes.append(f"OpenRLHF generates with vLLM only; the policy's own generation becomes its hybrid engine: "
                     f"every role runs on the policy's {policy} GPUs (--train.colocate_all)")
    return counts, notes


def vllm_engines(config: PPOConfig, hybrid: bool) -> tuple[int, int]:
    """`(engines, tensor parallel size)`: one engine per policy GPU unless a rollout group is given."""
    scale, rollout, policy = config.scale, config.rollout, config.scale.policy.num_workers
    if not rollout.separate_engine:
        return policy, 1
    # Colocated engines hold a fraction of one GPU each; split ones span whole GPUs (TP).
    tensor_parallel = 1 if scale.placement == "colocate" else scale.rollout.gpus_per_worker
    if not float(tensor_parallel).is_integer() or tensor_parallel < 1:
        raise refuse("scale.rollout.gpus_per_worker", tensor_parallel, "it is vLLM's tensor-parallel size: a whole number")
    engines, tensor_parallel = scale.rollout.num_workers, int(tensor_parallel)
    if hybrid and not rollout.async_ and engines * tensor_parallel != policy:
        raise refuse("scale.rollout.num_workers", engines,
                     f"colocated vLLM engines x tensor parallel must cover the policy's {policy} GPUs")
    return engines, tensor_parallel


def model_flags(config: PPOConfig, handover: Handover) -> dict[str, Value]:
    scale, model = config.scale, config.model
    flags: dict[str, Value] = {
        "actor.model_name_or_path": handover.actor_dir, "reward.model_name_or_path": config.reward.path,
        "ds.zero_stage": scale.zero_stage, "ds.param_dtype": "fp16" if scale.precision == "fp16" else "bf16",
        "ds.attn_implementation": model.attn_implementation,
        # Our reward models and critics are HF *ForSequenceClassification (LLaMA/Qwen): backbone
        # under `model.`, a bias-free `score` head, which is OpenRLHF's layout with this prefix.
        "ds.value_head_prefix": "score",
    }
    if config.algorithm.needs_critic:
        flags["critic.model_name_or_path"] = config.critic_path or config.reward.path or model.path
    if model.gradient_checkpointing:
        flags["actor.gradient_checkpointing_enable"] = None
    if scale.offload_optimizer:
        flags["ds.adam_offload"] = None
    return flags


def algorithm_flags(config: PPOConfig) -> dict[str, Value]:
    algo = config.algorithm
    estimator = ESTIMATORS.get(algo.advantage_estimator) or ("group_norm" if algo.norm_by_std else "dr_grpo")
    flags: dict[str, Value] = {
        "algo.advantage.estimator": estimator, "algo.advantage.gamma": algo.gamma, "algo.advantage.lambd": algo.lam,
        "algo.kl.init_coef": algo.kl_coef, "algo.kl.estimator": "k3" if algo.kl_in_loss else algo.kl_estimator,
        "algo.kl.horizon": algo.kl_horizon,
        "actor.eps_clip_low_high": [algo.clip_eps_low, algo.clip_eps_high or algo.clip_eps_low],
        "actor.loss_agg_mode": AGG_MODES[algo.agg_mode],
        # Our scores are not clipped; OpenRLHF's default clips them to [-10, 10].
        "reward.clip_range": [-1e6, 1e6],
    }
    if algo.kl_in_loss:
        flags["algo.kl.use_loss"] = None
    if algo.kl_target > 0:
        flags["algo.kl.target"] = algo.kl_target
    if algo.dual_clip > 0:
        flags["actor.dual_clip"] = algo.dual_clip
    if algo.entropy_coef > 0:
        flags["actor.entropy_coef"] = algo.entropy_coef
    if algo.needs_critic:
        flags["critic.value_clip"] = algo.value_clip
    return flags


def batch_flags(config: PPOConfig) -> dict[str, Value]:
    """OpenRLHF counts prompts per rollout and samples per optimizer step, as we do. The exported
    prompt file holds exactly the `total_steps x prompts_per_step` prompts our engine would use,
    so one episode over it is the same number of steps."""
    rollout = config.rollout
    return {
        "rollout.batch_size": rollout.prompts_per_step, "rollout.n_samples_per_prompt": rollout.samples_per_prompt,
        "rollout.micro_batch_size": rollout.forward_batch_size or config.optim.micro_batch_size,
        "rollout.max_new_tokens": rollout.max_new_tokens, "rollout.temperature": rollout.temperature,
        "rollout.top_p": rollout.top_p, "data.max_len": rollout.max_prompt_length + rollout.max_new_tokens,
        "train.batch_size": config.algorithm.mini_batch_size, "train.micro_batch_size": config.optim.micro_batch_size,
        "train.max_epochs": config.algorithm.ppo_epochs, "train.num_episodes": 1,
        "data.max_samples": config.total_steps * rollout.prompts_per_step, "train.seed": config.optim.seed,
    }


def optimizer_flags(config: PPOConfig) -> dict[str, Value]:
    """AdamW with warmup then cosine decay to `min_lr_ratio`: OpenRLHF's `cosine_with_min_lr`."""
    flags: dict[str, Value] = {}
    roles = [("actor", config.optim)] + ([("critic", config.critic_optim)] if config.algorithm.needs_critic else [])
    for prefix, optim in roles:
        flags.update({
            f"{prefix}.adam.lr": optim.lr, f"{prefix}.adam.betas": list(optim.betas),
            f"{prefix}.adam.weight_decay": optim.weight_decay, f"{prefix}.lr_scheduler": "cosine_with_min_lr",
            f"{prefix}.lr_warmup_ratio": optim.warmup_ratio, f"{prefix}.min_lr_ratio": optim.min_lr_ratio,
            f"{prefix}.max_norm": optim.max_grad_norm,
        })
    return flags


def lora_flags(config: PPOConfig) -> dict[str, Value]:
    """LoRA on the policy. Dropout is 0 as in our engine, so old and new log-probs agree."""
    lora = config.model.lora
    if not lora.enabled:
        return {}
    return {"ds.lora.rank": lora.rank, "ds.lora.alpha": int(lora.alpha), "ds.lora.dropout": 0.0,
            "ds.lora.target_modules": list(lora.target_modules)}


def output_flags(config: PPOConfig, handover: Handover) -> dict[str, Value]:
    """Prompts in, checkpoints and the final HF model out (under `handover.work_dir`), logging."""
    logging = config.logging
    flags: dict[str, Value] = {
        "data.prompt_dataset": handover.prompts_file, "data.input_key": "input", "data.apply_chat_template": None,
        "ckpt.output_dir": final_hf_dir(handover), "ckpt.path": f"{handover.work_dir}/checkpoints",
        "ckpt.save_steps": logging.save_every or -1, "ckpt.max_num": max(logging.keep_checkpoints, 1),
        "logger.logging_steps": max(logging.log_every, 1),
    }
    if config.resume:
        flags["ckpt.load_enable"] = None
    if logging.tensorboard:
        flags["logger.tensorboard_dir"] = f"{handover.work_dir}/tensorboard"
    return flags


def final_hf_dir(handover: Handover) -> str:
    """Where OpenRLHF saves the trained policy (`--ckpt.output_dir`)."""
    return f"{handover.work_dir}/hf"


def gpus_needed(config: PPOConfig) -> int:
    """GPUs the translated run reserves (hybrid placements share the policy's)."""
    scale = config.scale
    if scale.placement == "colocate" or not config.rollout.separate_engine:
        return scale.policy.num_workers
    roles = ["policy", "reference", "reward"] + (["critic"] if config.algorithm.needs_critic else [])
    engines = scale.rollout.num_workers * max(1, int(math.ceil(scale.rollout.gpus_per_worker)))
    return sum(getattr(scale, role).num_workers for role in roles) + engines

