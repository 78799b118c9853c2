"""The memory plan of PPO: policy, reference, reward, critic (when the estimator needs one) and a
separate rollout engine, through generate -> score -> train.

Without `scale.offload_idle` every role keeps its states on its device and the roles of a phase
run in parallel (as the driver does with split placement). With it the driver runs colocated roles
in turns (`distributed/offload.py`): one role at a time holds the device, reloading only its
weights to generate or score and everything to train, and a vLLM engine sleeps between rollouts;
the plan's phases are then the turns (`score:reference`, `train:critic`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from chimed_ray.planning.memory import GIB
from chimed_ray.planning.plan import PROBLEM, Footprint, MemoryPlan, RolePlan
from chimed_ray.planning.roles import Model, Runtime, vllm_engine, vllm_weights_fit
from chimed_ray.planning.shapes import ModelShape, model_shape
from chimed_ray.planning.stages_common import lora_shape, workers_per_device, zero_setup

KINDS = ("generate", "score", "train")


@dataclass
class RoleWork:
    """One role's footprint per kind of work it does, and while idle."""

    active: dict[str, Footprint]
    idle: Footprint
    host_bytes: int = 0


def ppo_plan(config: Any) -> MemoryPlan:
    """The plan of a validated `PPOConfig`."""
    scale, model, rollout = config.scale, config.model, config.rollout
    precision = scale.deepspeed_scale(scale.policy).resolved_precision()
    device = "gpu" if scale.use_gpu else "cpu"
    runtime = Runtime(device, precision, model.attn_implementation, model.gradient_checkpointing)
    frozen_runtime = Runtime(device, precision, model.attn_implementation)
    policy_shape = model_shape(model.path, model.tiny, model.tokenizer_path, "model.path")
    turns = scale.offload_idle_models
    work: dict[str, RoleWork] = {"policy": _policy(config, policy_shape, runtime, turns)}
    work["reference"] = _frozen(config, "reference", policy_shape, frozen_runtime, lm_head=True)
    if config.reward.path:
        reward_shape = model_shape(config.reward.path, model.tiny, model.tokenizer_path or model.path, "reward.path")
        work["reward"] = _frozen(config, "reward", reward_shape, frozen_runtime, lm_head=False)
    else:  # a Python function, run on the CPU
        work["reward"] = RoleWork({}, Footprint(buffers=runtime.context_bytes))
    if config.algorithm.needs_critic:
        work["critic"] = _critic(config, runtime, turns)
    notes: list[str] = []
    if rollout.separate_engine:
        work["rollout"] = _engine(config, policy_shape, frozen_runtime, turns, notes)
    phases = _phases(work, turns)
    roles = {}
    for name, role_work in work.items():
        group = getattr(scale, name)
        per_device = 1 if scale.placement == "colocate" else workers_per_device(group.gpus_per_worker, group.num_workers)
        footprints = {phase: _in_phase(name, role_work, phase) for phase in phases}
        roles[name] = RolePlan(name, group.num_workers, per_device, footprints, host_bytes=role_work.host_bytes)
    plan = MemoryPlan("ppo", device, scale.gpu_memory_gb, phases, roles, notes=notes)
    if scale.placement == "colocate":
        plan.shared = [tuple(roles)]
    return plan


def _phases(work: dict[str, RoleWork], turns: bool) -> list[str]:
    """generate, score, train; in turns, one phase per role and kind of work."""
    if not turns:
        return list(KINDS)
    return [kind if kind == "generate" else f"{kind}:{name}" for kind in KINDS for name, w in work.items() if kind in w.active]


def _in_phase(name: str, work: RoleWork, phase: str) -> Footprint:
    kind, _, owner = phase.partition(":")
    return work.active[kind] if kind in work.active and owner in ("", name) else work.idle


def _generation_rows(config: Any) -> int:
    rollout, scale = config.rollout, config.scale
    generators = scale.rollout.num_workers if rollout.separate_engine else scale.policy.num_workers
    return rollout.generation_batch_size or -(-rollout.batch_size // max(generators, 1))


def _forward_rows(config: Any, micro: int) -> int:
    return config.rollout.forward_batch_size or micro


def _tokens(config: Any) -> int:
    return config.rollout.max_prompt_length + config.rollout.max_new_tokens


def _policy(config: Any, shape: ModelShape, runtime: Runtime, turns: bool) -> RoleWork:
    scale, micro = config.scale, config.optim.micro_batch_size
    policy = Model(shape, runtime, True, zero_setup(scale, scale.policy.num_workers, runtime.precision),
                   lora_shape(config.model))
    active = {"score": policy.score(_forward_rows(config, micro), _tokens(config), weights_only=turns),
              "train": policy.train(micro, _tokens(config))}
    if not config.rollout.separate_engine:
        active["generate"] = policy.generate(_generation_rows(config), config.rollout.max_prompt_length,
                                             _tokens(config), weights_only=turns)
    return RoleWork(active, policy.resident(offloaded=turns), policy.states().host)


def _frozen(config: Any, name: str, shape: ModelShape, runtime: Runtime, lm_head: bool) -> RoleWork:
    """Reference or reward: a replica in the run's dtype, or ZeRO-3 inference shards over the
    role's workers with `scale.frozen_zero3`."""
    scale = config.scale
    shards = getattr(scale, name).num_workers if getattr(scale, "frozen_zero3", False) else 1
    frozen = Model(shape, runtime, lm_head, frozen_shards=shards)
    score = frozen.score(_forward_rows(config, config.optim.micro_batch_size), _tokens(config))
    return RoleWork({"score": score}, frozen.resident(offloaded=scale.offload_idle_models))


def _critic(config: Any, runtime: Runtime, turns: bool) -> RoleWork:
    model, scale, micro = config.model, config.scale, config.critic_optim.micro_batch_size
    path = config.critic_path or config.reward.path or model.path
    key = "critic_path" if config.critic_path else ("reward.path" if config.reward.path else "model.path")
    shape = model_shape(path, model.tiny, model.tokenizer_path or model.path, key)
    critic = Model(shape, runtime, False, zero_setup(scale, scale.critic.num_workers, runtime.precision))
    active = {"score": critic.score(_forward_rows(config, micro), _tokens(config), weights_only=turns),
              "train": critic.train(micro, _tokens(config))}
    return RoleWork(active, critic.resident(offloaded=turns), critic.states().host)


def _engine(config: Any, shape: ModelShape, runtime: Runtime, turns: bool, notes: list[str]) -> RoleWork:
    """The separate engine: vLLM's up-front reservation (asleep between rollouts in turns), or an
    HF replica generating."""
    rollout, budget = config.rollout, int(config.scale.gpu_memory_gb * GIB)
    if rollout.engine == "vllm":
        footprint, engine_notes = vllm_engine(shape, runtime, rollout.vllm_gpu_memory_utilization, budget)
        notes += engine_notes
        if runtime.device == "gpu" and not vllm_weights_fit(shape, runtime, rollout.vllm_gpu_memory_utilization,
                                                            budget, _tokens(config)):
            notes.append(PROBLEM + "rollout.vllm_gpu_memory_utilization leaves vLLM no room for KV-cache blocks "
                         "after the weights; raise it")
        asleep: Optional[Footprint] = Footprint(buffers=runtime.context_bytes) if turns else None
        return RoleWork({"generate": footprint}, asleep or footprint)
    engine = Model(shape, runtime, True)
    generate = engine.generate(_generation_rows(config), rollout.max_prompt_length, _tokens(config))
    return RoleWork({"generate": generate}, engine.resident(offloaded=turns))
