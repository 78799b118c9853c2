"""Start PPO's actor groups from a validated `PPOConfig`: reserve placement groups, create the
policy, reference, reward, critic (only when the advantage estimator needs one) and separate
rollout-engine groups, and load every model. Each worker receives plain specs, not the config."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from chimed_ray.config.rlhf import PPOConfig
from chimed_ray.distributed.critic import CriticWorker, ValueLossSpec
from chimed_ray.distributed.frozen import ReferenceWorker, RewardWorker
from chimed_ray.distributed.group import ActorGroup, gather
from chimed_ray.distributed.placement import RoleResources, Slot, plan_slots, release
from chimed_ray.distributed.policy import PolicyLossSpec, PolicyWorker
from chimed_ray.distributed.rollout import RolloutWorker
from chimed_ray.distributed.worker import ModelSpec

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


def model_spec(config: PPOConfig, path: str, tokenizer_path: str, trainable: bool) -> ModelSpec:
    """Trainable roles load in fp32 (DeepSpeed casts to bf16/fp16 and keeps fp32 master weights);
    frozen roles load directly in the run's precision."""
    model = config.model
    precision = "fp32" if trainable else config.scale.deepspeed_scale(config.scale.policy).resolved_precision()
    return ModelSpec(
        path=path, tokenizer_path=tokenizer_path, tiny=model.tiny, trust_remote_code=model.trust_remote_code,
        attn_implementation=model.attn_implementation, precision=precision, seed=config.optim.seed,
        gradient_checkpointing=model.gradient_checkpointing and trainable,
    )


def start_groups(config: PPOConfig) -> PPOGroups:
    """Reserve resources, create every role's actor group and load the models (in parallel)."""
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

    policy_path, policy_tokenizer = config.model.path, config.model.tokenizer_path or config.model.path
    total = optimizer_steps(config)
    refs = groups["policy"].async_run(
        "setup", model_spec(config, policy_path, policy_tokenizer, trainable=True),
        replace(config.optim, gradient_accumulation_steps=config.gradient_accumulation("policy")),
        scale.deepspeed_scale(scale.policy), total, lora=config.model.lora)
    frozen_policy = model_spec(config, policy_path, policy_tokenizer, trainable=False)
    refs += groups["reference"].async_run("setup", frozen_policy, config.optim.micro_batch_size)
    reward_model = model_spec(config, config.reward.path, "" if config.reward.path else policy_tokenizer, trainable=False)
    refs += groups["reward"].async_run("setup", reward_model, config.reward.function, config.optim.micro_batch_size)
    if needs_critic:
        critic_path = config.critic_path or config.reward.path or config.model.path
        critic_model = model_spec(config, critic_path, policy_tokenizer, trainable=True)
        refs += groups["critic"].async_run(
            "setup", critic_model,
            replace(config.critic_optim, gradient_accumulation_steps=config.gradient_accumulation("critic")),
            scale.deepspeed_scale(scale.critic), total)
    if config.rollout.separate_engine:
        refs += groups["rollout"].async_run("setup", config.rollout.engine, frozen_policy, 0,
                                            config.rollout.vllm_gpu_memory_utilization)
    gather([ref for group in groups.values() for ref in group.ready] + refs)
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
