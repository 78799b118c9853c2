"""The memory plan of each stage: which models run where, in which phases, at which batch sizes.

Mirrors what the stages do: Ray Train stages (pretrain, SFT, reward, DPO) train one model under
DeepSpeed; DPO first scores the reference on its own actors; PPO runs generate -> score -> train
each step over its role groups; rejection sampling samples and scores on actor pools, then runs
SFT. Model shapes come from each model directory's `config.json` (or `model.tiny`).
"""

from __future__ import annotations

from typing import Any

from chimed_ray.planning.memory import GIB, ZeroSetup
from chimed_ray.planning.plan import Footprint, MemoryPlan, RolePlan
from chimed_ray.planning.roles import LoRAShape, Model, Runtime, vllm_engine, vllm_weights_fit
from chimed_ray.planning.shapes import model_shape

TRAIN_STAGES = ("pretrain", "sft", "reward", "dpo")
PPO_PHASES = ["generate", "score", "train"]
PROBLEM = "does not fit: "  # a note that fails the plan whatever the totals (see MemoryPlan.problems)


def workers_per_device(gpus_per_worker: float, num_workers: int) -> int:
    """Workers of one role that Ray packs onto one GPU (fractional GPUs)."""
    return max(1, min(num_workers, int(1 / gpus_per_worker + 1e-9))) if gpus_per_worker < 1 else 1


def _lora(model_config: Any) -> LoRAShape | None:
    lora = model_config.lora
    return LoRAShape(lora.rank, tuple(lora.target_modules), lora.dropout) if lora.enabled else None


def _zero(scale: Any, num_workers: int, precision: str) -> ZeroSetup:
    return ZeroSetup(scale.zero_stage, num_workers, scale.offload_optimizer, scale.offload_params,
                     mixed_precision=precision != "fp32")


def train_stage_plan(stage: str, config: Any) -> MemoryPlan:
    """Pretrain, SFT, reward and DPO: one trained model per Ray Train worker (DPO: and its reference
    scored beforehand by Ray Data actors on the same GPUs)."""
    scale, model = config.scale, config.model
    device, precision = ("gpu" if scale.use_gpu else "cpu"), scale.resolved_precision()
    runtime = Runtime(device, precision, model.attn_implementation, model.gradient_checkpointing)
    shape = model_shape(model.path, model.tiny, model.tokenizer_path, "model.path")
    pairs = stage in ("reward", "dpo")  # chosen and rejected rows in one forward
    rows = config.optim.micro_batch_size * (2 if pairs else 1)
    trained = Model(shape, runtime, lm_head=stage != "reward", zero=_zero(scale, scale.num_workers, precision),
                    lora=_lora(model))
    name = {"reward": "reward_model", "dpo": "policy"}.get(stage, "model")
    per_device = workers_per_device(scale.gpus_per_worker, scale.num_workers)
    roles = {name: RolePlan(name, scale.num_workers, per_device, {"train": trained.train(rows, config.data.max_length)},
                            host_bytes=trained.states().host)}
    plan = MemoryPlan(stage, device, scale.gpu_memory_gb, ["train"], roles)
    if stage == "dpo" and config.algorithm.needs_reference:
        reference_shape = model_shape(config.reference.path or model.path, model.tiny, model.tokenizer_path,
                                      "reference.path")
        reference = Model(reference_shape, runtime, lm_head=True)
        actors = config.reference.num_actors or scale.num_workers
        score = reference.score(2 * config.reference.batch_size, config.data.max_length)
        roles["reference"] = RolePlan("reference", actors, per_device, {"score_reference": score})
        plan.phases = ["score_reference", "train"]
        plan.shared = [(name, "reference")]  # one after the other on the same GPUs
    return plan


def ppo_plan(config: Any) -> MemoryPlan:
    """PPO's roles through generate -> score -> train. Colocated roles share every bundle's GPU;
    with `offload_idle` a role that is not working leaves the device, and a trained role that is
    only generating or scoring keeps just its weights there."""
    scale, model, rollout = config.scale, config.model, config.rollout
    precision = scale.deepspeed_scale(scale.policy).resolved_precision()
    device = "gpu" if scale.use_gpu else "cpu"
    runtime = Runtime(device, precision, model.attn_implementation, model.gradient_checkpointing)
    frozen_runtime = Runtime(device, precision, model.attn_implementation)
    tokenizer = model.tokenizer_path or model.path
    policy_shape = model_shape(model.path, model.tiny, model.tokenizer_path, "model.path")
    tokens, prompt_tokens = rollout.max_prompt_length + rollout.max_new_tokens, rollout.max_prompt_length
    idle_off = scale.offload_idle_models
    budget = int(scale.gpu_memory_gb * GIB)  # vLLM reserves a share of it

    def forward_rows(micro: int) -> int:
        return rollout.forward_batch_size or micro

    def role(name: str, model_: Model | None, active: dict[str, Footprint]) -> RolePlan:
        group = getattr(scale, name)
        idle = model_.resident(offloaded=idle_off) if model_ else Footprint(buffers=runtime.context_bytes)
        phases = {phase: active.get(phase, idle) for phase in PPO_PHASES}
        per_device = 1 if scale.placement == "colocate" else workers_per_device(group.gpus_per_worker, group.num_workers)
        return RolePlan(name, group.num_workers, per_device, phases, host_bytes=model_.states().host if model_ else 0)

    generators = scale.rollout.num_workers if rollout.separate_engine else scale.policy.num_workers
    gen_rows = rollout.generation_batch_size or -(-rollout.batch_size // max(generators, 1))
    policy = Model(policy_shape, runtime, True, _zero(scale, scale.policy.num_workers, precision), _lora(model))
    micro = config.optim.micro_batch_size
    active = {"score": policy.score(forward_rows(micro), tokens, weights_only=idle_off), "train": policy.train(micro, tokens)}
    if not rollout.separate_engine:
        active["generate"] = policy.generate(gen_rows, prompt_tokens, tokens, weights_only=idle_off)
    roles = {"policy": role("policy", policy, active)}
    reference = Model(policy_shape, frozen_runtime, True)
    roles["reference"] = role("reference", reference, {"score": reference.score(forward_rows(micro), tokens)})
    notes: list[str] = []
    if config.reward.path:
        reward_shape = model_shape(config.reward.path, model.tiny, tokenizer, "reward.path")
        reward = Model(reward_shape, frozen_runtime, False)
        roles["reward"] = role("reward", reward, {"score": reward.score(forward_rows(micro), tokens)})
    else:
        roles["reward"] = role("reward", None, {})  # a Python function on the CPU
    if config.algorithm.needs_critic:
        critic_path = config.critic_path or config.reward.path or model.path
        key = "critic_path" if config.critic_path else ("reward.path" if config.reward.path else "model.path")
        critic_shape = model_shape(critic_path, model.tiny, tokenizer, key)
        critic_micro = config.critic_optim.micro_batch_size
        critic = Model(critic_shape, runtime, False, _zero(scale, scale.critic.num_workers, precision))
        roles["critic"] = role("critic", critic, {"score": critic.score(forward_rows(critic_micro), tokens, weights_only=idle_off),
                                                  "train": critic.train(critic_micro, tokens)})
    if rollout.separate_engine:
        roles["rollout"], engine_notes = _rollout_role(config, policy_shape, frozen_runtime, gen_rows, budget, role)
        notes += engine_notes
    plan = MemoryPlan("ppo", device, scale.gpu_memory_gb, list(PPO_PHASES), roles, notes=notes)
    if scale.placement == "colocate":
        plan.shared = [tuple(roles)]
    return plan


def _rollout_role(config: Any, shape, runtime: Runtime, rows: int, budget: int, role) -> tuple[RolePlan, list[str]]:
    """The separate engine: vLLM's up-front reservation, or an HF replica generating."""
    rollout, tokens = config.rollout, config.rollout.max_prompt_length + config.rollout.max_new_tokens
    if rollout.engine == "vllm":
        footprint, notes = vllm_engine(shape, runtime, rollout.vllm_gpu_memory_utilization, budget)
        if runtime.device == "gpu" and not vllm_weights_fit(shape, runtime, rollout.vllm_gpu_memory_utilization, budget, tokens):
            notes.append(PROBLEM + "rollout.vllm_gpu_memory_utilization leaves vLLM no room for KV-cache blocks "
                         "after the weights; raise it")
        asleep = Footprint(buffers=runtime.context_bytes)
        idle = asleep if config.scale.offload_idle_models else footprint  # vLLM sleeps between rollouts
        plan = role("rollout", None, {})
        plan.phases = {phase: (footprint if phase == "generate" else idle) for phase in PPO_PHASES}
        return plan, notes
    engine = Model(shape, runtime, True)
    return role("rollout", engine, {"generate": engine.generate(rows, rollout.max_prompt_length, tokens)}), []


def rejection_sampling_plan(config: Any) -> MemoryPlan:
    """Sampling and scoring actor pools (streaming together), then an SFT round on Ray Train."""
    sft_plan = train_stage_plan("sft", _sft_of(config))
    inference, sampling, model = config.inference, config.sampling, config.model
    device = "gpu" if (config.sft.scale.use_gpu or inference.gpus_per_actor > 0) else "cpu"
    on_gpu = inference.gpus_per_actor > 0
    sampler_runtime = Runtime("gpu" if on_gpu else "cpu", "bf16" if on_gpu else "fp32", model.attn_implementation)
    # rollout/batch_inference.py loads the reward model in fp32 even on a GPU.
    scorer_runtime = Runtime(sampler_runtime.device, "fp32", model.attn_implementation)
    shape = model_shape(model.path, model.tiny, model.tokenizer_path, "model.path")
    tokens = sampling.max_prompt_length + sampling.max_new_tokens
    per_device = workers_per_device(inference.gpus_per_actor, inference.num_actors) if on_gpu else 1
    sampler = Model(shape, sampler_runtime, True).generate(inference.batch_size, sampling.max_prompt_length, tokens)
    roles = {"sampler": RolePlan("sampler", inference.num_actors, per_device, {"sample_and_score": sampler})}
    notes = []
    if config.reward.path:
        reward_shape = model_shape(config.reward.path, model.tiny, model.path, "reward.path")
        scorer = Model(reward_shape, scorer_runtime, False).score(inference.batch_size, tokens)
        roles["scorer"] = RolePlan("scorer", inference.num_actors, per_device, {"sample_and_score": scorer})
        notes.append("the scorer loads the reward model in fp32 (rollout/batch_inference.py)")
    (trainer,) = sft_plan.roles.values()
    roles["sft"] = trainer
    shared = [tuple(roles)] if per_device > 1 else [("sampler", "sft")]
    return MemoryPlan("rejection-sampling", device, config.sft.scale.gpu_memory_gb,
                      ["sample_and_score", "train"], roles, shared=shared, notes=notes)


def _sft_of(config: Any) -> Any:
    """Each round's SFT config: `sft` with the start checkpoint's model (same shape every round)."""
    from dataclasses import replace

    return replace(config.sft, model=replace(config.sft.model, path=config.model.path,
                                             tokenizer_path=config.model.tokenizer_path, tiny=config.model.tiny))


def stage_plan(stage: str, config: Any) -> MemoryPlan:
    """The memory plan of a validated stage config."""
    if stage in TRAIN_STAGES:
        return train_stage_plan(stage, config)
    if stage == "ppo":
        return ppo_plan(config)
    if stage == "rejection-sampling":
        return rejection_sampling_plan(config)
    raise ValueError(f"no memory plan for stage {stage!r}; plans exist for {', '.join(PLANNED_STAGES)}")


PLANNED_STAGES = TRAIN_STAGES + ("ppo", "rejection-sampling")
