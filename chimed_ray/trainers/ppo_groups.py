"""Start PPO's actor groups from a validated `PPOConfig`: reserve placement groups, create the
policy, reference, reward, critic (only when the advantage estimator needs one) and separate
rollout-engine groups, and load every model. Each worker receives plain specs, not the config:
model specs (with the DeepSpeed config a ZeRO-3 role is built partitioned for), batch sizes, and
its role's optimizer and scale sections."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from chimed_ray.config import OptimConfig
from chimed_ray.config.rlhf import PPOConfig
from chimed_ray.distributed.critic import CriticWorker, ValueLossSpec
from chimed_ray.distributed.frozen import ReferenceWorker, RewardWorker
from chimed_ray.distributed.group import ActorGroup, gather
from chimed_ray.distributed.placement import RoleResources, Slot, plan_slots, release
from chimed_ray.distributed.policy import PolicyLossSpec, PolicyWorker
from chimed_ray.distributed.rollout import RolloutWorker
from chimed_ray.distributed.worker import ModelSpec
from chimed_ray.trainers.engine import deepspeed_config, inference_config

WORKERS = {
    "policy": PolicyWorker, "critic": CriticWorker, "reference": ReferenceWorker,
    "reward": RewardWorker, "rollout": RolloutWorker,
}


@dataclass
class PPOGroups:
    """The running actor groups of one PPO run."""

    policy: ActorGroup
    reference: ActorGroup
    reward: ActorGroup
    critic: Optional[ActorGroup]
    rollout: Optional[ActorGroup]  # None: the policy workers generate
    slots: dict[str, list[Slot]]

    def by_role(self) -> dict[str, ActorGroup]:
        roles = {"policy": self.policy, "reference": self.reference, "reward": self.reward,
                 "critic": self.critic, "rollout": self.rollout}
        return {role: group for role, group in roles.items() if group is not None}

    def find_actor(self, actor_id: Optional[str]) -> str:
        """`role rank r` of the actor with hex id `actor_id` ("an actor" if it is not one of ours)."""
        for role, group in self.by_role().items():
            rank = group.rank_of(actor_id)
            if rank is not None:
                return f"{role} rank {rank}"
        return "an actor"

    def kill(self, role: str, rank: int) -> None:
        """Kill one worker, as a crashed node would (fault injection for recovery tests)."""
        import ray

        group = self.by_role().get(role)
        if group is None or rank >= group.world_size:
            raise ValueError(f"fault: this run has no {role} rank {rank}")
        ray.kill(group.actors[rank], no_restart=True)

    def shutdown(self) -> None:
        for group in self.by_role().values():
            group.shutdown()
        release(self.slots)


def optimizer_steps(config: PPOConfig) -> int:
    """Optimizer steps over the whole run (for the LR schedule)."""
    per_step = config.rollout.batch_size // config.algorithm.mini_batch_size
    return config.total_steps * config.algorithm.ppo_epochs * per_step


def model_spec(config: PPOConfig, path: str, tokenizer_path: str, trainable: bool,
               deepspeed: Optional[dict] = None) -> ModelSpec:
    """Every role loads its weights in the run's training dtype (bf16 on GPU: DeepSpeed keeps the
    fp32 master copy in the optimizer's partitions); `deepspeed` is the config a ZeRO-3 role is
    built partitioned for (None: a plain replica)."""
    model = config.model
    precision = config.scale.deepspeed_scale(config.scale.policy).resolved_precision()
    return ModelSpec(
        path=path, tokenizer_path=tokenizer_path, tiny=model.tiny, trust_remote_code=model.trust_remote_code,
        attn_implementation=model.attn_implementation, precision=precision, seed=config.optim.seed,
        gradient_checkpointing=model.gradient_checkpointing and trainable, deepspeed=deepspeed,
    )


def role_optim(config: PPOConfig, role: str) -> OptimConfig:
    optim = config.optim if role == "policy" else config.critic_optim
    return replace(optim, gradient_accumulation_steps=config.gradient_accumulation(role))


def trainable_spec(config: PPOConfig, role: str, path: str, tokenizer_path: str) -> ModelSpec:
    """The policy's or critic's model spec: ZeRO-3 builds it already partitioned."""
    scale = config.scale.deepspeed_scale(getattr(config.scale, role))
    deepspeed = deepspeed_config(role_optim(config, role), scale) if scale.zero_stage == 3 else None
    return model_spec(config, path, tokenizer_path, trainable=True, deepspeed=deepspeed)


def frozen_spec(config: PPOConfig, path: str, tokenizer_path: str) -> ModelSpec:
    """Reference and reward: ZeRO-3 inference shards with `scale.frozen_zero3`, else replicas."""
    precision = config.scale.deepspeed_scale(config.scale.policy).resolved_precision()
    deepspeed = inference_config(precision, forward_batch_size(config)) if config.scale.frozen_zero3 else None
    return model_spec(config, path, tokenizer_path, trainable=False, deepspeed=deepspeed)


def forward_batch_size(config: PPOConfig, role: str = "policy") -> int:
    """Rows per no-grad scoring forward: `rollout.forward_batch_size`, else the role's micro-batch."""
    optim = config.critic_optim if role == "critic" else config.optim
    return config.rollout.forward_batch_size or optim.micro_batch_size


def start_groups(config: PPOConfig) -> PPOGroups:
    """Reserve resources, create every role's actor group and load the models.

    Roles load in parallel; when colocated roles take turns on the device (`offload_idle`), each
    role loads and leaves the device before the next one starts, so loading never needs more
    device memory than the largest role.
    """
    scale, needs_critic = config.scale, config.algorithm.needs_critic
    roles = ["policy", "reference", "reward"] + (["critic"] if needs_critic else [])
    roles += ["rollout"] if config.rollout.separate_engine else []
    resources = {}
    for role in roles:
        group = getattr(scale, role)
        gpus = group.gpus_per_worker if scale.use_gpu else 0.0
        resources[role] = RoleResources(group.num_workers, group.cpus_per_worker, gpus)
    slots = plan_slots(resources, scale.placement, config.run_name)
    backend = "nccl" if scale.use_gpu else "gloo"
    groups = {role: ActorGroup(role, WORKERS[role], slots[role], backend) for role in roles}
    gather([ref for group in groups.values() for ref in group.ready])

    policy_path, policy_tokenizer = config.model.path, config.model.tokenizer_path or config.model.path
    total, rollout_cfg = optimizer_steps(config), config.rollout
    setups = {"policy": lambda: groups["policy"].async_run(
        "setup", trainable_spec(config, "policy", policy_path, policy_tokenizer), role_optim(config, "policy"),
        scale.deepspeed_scale(scale.policy), total, rollout_cfg.generation_batch_size, forward_batch_size(config),
        lora=config.model.lora)}
    setups["reference"] = lambda: groups["reference"].async_run(
        "setup", frozen_spec(config, policy_path, policy_tokenizer), forward_batch_size(config))
    reward_model = frozen_spec(config, config.reward.path, "" if config.reward.path else policy_tokenizer)
    setups["reward"] = lambda: groups["reward"].async_run(
        "setup", reward_model, config.reward.function, forward_batch_size(config))
    if needs_critic:
        critic_path = config.critic_path or config.reward.path or config.model.path
        setups["critic"] = lambda: groups["critic"].async_run(
            "setup", trainable_spec(config, "critic", critic_path, policy_tokenizer), role_optim(config, "critic"),
            scale.deepspeed_scale(scale.critic), total, forward_batch_size(config, "critic"))
    if rollout_cfg.separate_engine:
        engine_model = model_spec(config, policy_path, policy_tokenizer, trainable=False)
        setups["rollout"] = lambda: groups["rollout"].async_run(
            "setup", rollout_cfg.engine, engine_model, rollout_cfg.generation_batch_size,
            rollout_cfg.vllm_gpu_memory_utilization)
    if scale.offload_idle_models:
        for role, setup in setups.items():
            gather(setup())
            gather(groups[role].async_run("offload"))
    else:
        gather([ref for setup in setups.values() for ref in setup()])
    return PPOGroups(groups["policy"], groups["reference"], groups["reward"], groups.get("critic"),
                     groups.get("rollout"), slots)


def loss_specs(config: PPOConfig, step: int) -> tuple[PolicyLossSpec, ValueLossSpec]:
    """What each trainable role needs for one update (the shuffle seed changes every step)."""
    algo, scale = config.algorithm, config.scale
    policy = PolicyLossSpec(
        clip_eps_low=algo.clip_eps_low, clip_eps_high=algo.clip_eps_high or algo.clip_eps_low,
        dual_clip=algo.dual_clip, kl_coef=algo.kl_coef if algo.kl_in_loss else 0.0,
        entropy_coef=algo.entropy_coef, agg_mode=algo.agg_mode, ppo_epochs=algo.ppo_epochs,
        mini_batch_size=algo.mini_batch_size // scale.policy.num_workers,
        micro_batch_size=config.optim.micro_batch_size, temperature=config.rollout.temperature,
        seed=config.optim.seed + step,
    )
    critic = ValueLossSpec(
        value_clip=algo.value_clip, agg_mode=algo.agg_mode, ppo_epochs=algo.ppo_epochs,
        mini_batch_size=algo.mini_batch_size // scale.critic.num_workers,
        micro_batch_size=config.critic_optim.micro_batch_size, seed=config.optim.seed + step,
    )
    return policy, critic
