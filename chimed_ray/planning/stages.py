"""The memory plan of each stage: which models run where, in which phases, at which batch sizes.

Mirrors what the stages do: Ray Train stages (pretrain, SFT, reward, DPO) train one model under
DeepSpeed; DPO first scores the reference on its own actors; PPO runs generate -> score -> train
each step over its role groups; rejection sampling samples and scores on actor pools, then runs
SFT. Model shapes come from each model directory's `config.json` (or `model.tiny`).
"""

from __future__ import annotations

from typing import Any

from chimed_ray.planning.plan import MemoryPlan, RolePlan
from chimed_ray.planning.ppo import ppo_plan
from chimed_ray.planning.roles import Model, Runtime
from chimed_ray.planning.shapes import model_shape
from chimed_ray.planning.stages_common import lora_shape, workers_per_device, zero_setup

TRAIN_STAGES = ("pretrain", "sft", "reward", "dpo")


def train_stage_plan(stage: str, config: Any) -> MemoryPlan:
    """Pretrain, SFT, reward and DPO: one trained model per Ray Train worker (DPO: and its reference
    scored beforehand by Ray Data actors on the same GPUs)."""
    scale, model = config.scale, config.model
    device, precision = ("gpu" if scale.use_gpu else "cpu"), scale.resolved_precision()
    runtime = Runtime(device, precision, model.attn_implementation, model.gradient_checkpointing)
    shape = model_shape(model.path, model.tiny, model.tokenizer_path, "model.path")
    pairs = stage in ("reward", "dpo")  # chosen and rejected rows in one forward
    rows = config.optim.micro_batch_size * (2 if pairs else 1)
    trained = Model(shape, runtime, lm_head=stage != "reward", zero=zero_setup(scale, scale.num_workers, precision),
                    lora=lora_shape(model))
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
