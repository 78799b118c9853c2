"""Configs of the RLHF stages: the pairwise reward model, PPO on Ray actor groups, and ChiMed-GPT's
reward-guided rejection sampling.

Everything here is validated once, before any Ray actor starts: batch sizes must divide evenly
over workers, colocated roles must fit in one bundle, and exactly one reward source is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from chimed_ray.config.common import DataConfig, LoggingConfig, ModelConfig, OptimConfig, ScaleConfig
from chimed_ray.config.loader import check
from chimed_ray.config.train import SFTConfig, TrainStageConfig

ROLES = ("policy", "critic", "reference", "reward", "rollout")


@dataclass
class RewardConfig(TrainStageConfig):
    """Pairwise (Bradley-Terry) reward model on preference pairs, a scalar head on the SFT model.

    `margin` is subtracted from r_chosen - r_rejected in the loss (Llama 2's margin loss); 0 is the
    plain Bradley-Terry loss. The default data is the bundled `preference` set.
    """

    output_dir: str = "outputs/reward"
    run_name: str = "reward"
    margin: float = 0.0


@dataclass
class RewardSourceConfig:
    """Where scores come from: a reward-model HF directory (`path`) or a Python function
    (`function: "package.module:function"`) called as `fn(prompts, responses, response_ids)` and
    returning one float per response. Exactly one of the two is set. A reward model reads the
    policy's token ids as they are, so it must share the policy's tokenizer (ChiMed's pipeline
    trains it from the SFT model, which guarantees that)."""

    path: str = ""
    function: str = ""

    def validate(self) -> None:
        check(bool(self.path) != bool(self.function), "path", "set exactly one of reward.path and reward.function")
        if self.function:
            module, _, name = self.function.partition(":")
            check(bool(module) and bool(name), "function", f"expected 'module:function', got {self.function!r}")


@dataclass
class SamplingConfig:
    """How answers are sampled (PPO rollouts and rejection sampling)."""

    max_prompt_length: int = 256
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def validate(self) -> None:
        check(self.max_prompt_length >= 4, "max_prompt_length", f"must be >= 4, got {self.max_prompt_length}")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 disables top-k)")


@dataclass
class RolloutConfig(SamplingConfig):
    """PPO rollouts: `prompts_per_step` prompts, `samples_per_prompt` answers each.

    `engine: hf` runs HF `generate` (KV cache) on the policy workers themselves unless
    `separate_engine` is true; `vllm` always runs a separate engine group (`scale.rollout`). A
    separate engine receives the policy weights after every update.
    """

    engine: Literal["hf", "vllm"] = "hf"
    separate_engine: bool = False
    prompts_per_step: int = 8
    samples_per_prompt: int = 1
    vllm_gpu_memory_utilization: float = 0.5
    # Prompts per generate call on each rank (0: the rank's whole shard at once); bounds KV cache.
    generation_batch_size: int = 0
    # Rows per no-grad forward when scoring (log-probs, values, rewards); 0: optim.micro_batch_size.
    forward_batch_size: int = 0
    # How a separate engine receives the policy's weights: a torch.distributed group (gloo on CPU,
    # NCCL on GPU) in buckets of `sync_bucket_mb`, or Ray's object store (the fallback).
    weight_sync: Literal["collective", "object_store"] = "collective"
    sync_bucket_mb: int = 256
    lora_sync: Literal["merged", "adapter"] = "merged"  # a LoRA policy sends merged weights or adapters only
    # One-step off-policy: the engine generates step t+1's batch while the policy trains on step t.
    async_: bool = False

    def validate(self) -> None:
        super().validate()
        check(self.prompts_per_step >= 1, "prompts_per_step", "must be >= 1")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1")
        check(self.generation_batch_size >= 0, "generation_batch_size", "must be >= 0 (0: the whole shard)")
        check(self.forward_batch_size >= 0, "forward_batch_size", "must be >= 0 (0: optim.micro_batch_size)")
        check(self.sync_bucket_mb >= 1, "sync_bucket_mb", f"must be >= 1, got {self.sync_bucket_mb}")
        check(not self.async_ or self.separate_engine, "async",
              "pipelined rollout needs a separate engine; set rollout.separate_engine=true")
        check(self.engine == "hf" or self.lora_sync == "merged", "lora_sync",
              "vLLM receives merged weights; adapter sync needs rollout.engine=hf")
        check(self.engine == "hf" or self.separate_engine, "separate_engine",
              "the vllm engine runs as its own group; set rollout.separate_engine=true")

    @property
    def batch_size(self) -> int:
        """Responses per PPO step."""
        return self.prompts_per_step * self.samples_per_prompt


@dataclass
class AlgorithmConfig:
    """The RL objective: advantage estimator, KL penalty, clipping, epochs and minibatches."""

    advantage_estimator: str = "gae"
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True  # gae and reinforce_pp*: whiten over the batch; grpo/rloo never are
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    kl_target: float = 0.0  # > 0 turns on the adaptive controller
    kl_horizon: int = 10000
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.0  # 0: same as clip_eps_low
    value_clip: float = 0.2
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batch_size: int = 8  # responses per optimizer step, over all workers
    agg_mode: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = "token_mean"
    kl_in_loss: bool = False  # GRPO style: k3 KL to the reference in the policy loss, not in the reward
    dual_clip: float = 0.0  # > 1 turns on dual-clip PPO (Ye et al. 2020) with this c; 0 disables
    norm_by_std: bool = True  # GRPO divides by the group's std; false is Dr. GRPO

    def validate(self) -> None:
        from chimed_ray.algorithms import ADVANTAGE_ESTIMATORS

        check(self.advantage_estimator in ADVANTAGE_ESTIMATORS, "advantage_estimator",
              f"expected one of {sorted(ADVANTAGE_ESTIMATORS)}, got {self.advantage_estimator!r}")
        check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl_target >= 0, "kl_target", "must be >= 0 (0: fixed kl_coef)")
        check(self.kl_horizon >= 1, "kl_horizon", "must be >= 1")
        check(0 < self.clip_eps_low < 1, "clip_eps_low", f"must be in (0, 1), got {self.clip_eps_low}")
        check(self.clip_eps_high >= 0, "clip_eps_high", "must be >= 0 (0: same as clip_eps_low)")
        check(self.value_clip >= 0, "value_clip", "must be >= 0 (0 disables value clipping)")
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1")
        check(self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1")
        check(self.dual_clip == 0 or self.dual_clip > 1, "dual_clip", f"must be 0 (off) or > 1, got {self.dual_clip}")
        check(not (self.kl_in_loss and self.kl_target), "kl_target",
              "the adaptive controller steers a KL penalty in the reward; kl_in_loss uses the fixed kl_coef")

    @property
    def needs_critic(self) -> bool:
        from chimed_ray.algorithms import estimator_needs_critic

        return estimator_needs_critic(self.advantage_estimator)

    @property
    def needs_groups(self) -> bool:
        from chimed_ray.algorithms import estimator_needs_groups

        return estimator_needs_groups(self.advantage_estimator)


@dataclass
class GroupScale:
    """One role's Ray actors: how many, and the CPUs/GPUs each one holds (GPUs only with use_gpu;
    fractions let colocated roles share a GPU)."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0

    def validate(self) -> None:
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be positive")
        check(self.gpus_per_worker > 0, "gpus_per_worker", "must be positive")


@dataclass
class PPOScaleConfig:
    """Actor groups and their placement.

    `split`: every role gets its own placement group (bundles not shared). `colocate`: one
    placement group whose bundle i holds rank i of every role, each role taking its fraction.
    DeepSpeed settings apply to the two trainable roles (policy, critic).
    """

    placement: Literal["split", "colocate"] = "split"
    use_gpu: bool = False
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Colocated roles take turns on a device: idle models and optimizer states leave it between
    # generate, score and train. None: true with placement=colocate, false with split.
    offload_idle: Optional[bool] = None
    # Reference and reward models: false keeps a full replica per rank in the run's dtype (fast,
    # no communication); true partitions them as ZeRO-3 inference shards over their group (each
    # forward gathers one layer at a time; 1/N of the memory, for models that do not fit whole).
    frozen_zero3: bool = False
    gpu_memory_gb: float = 80.0  # per GPU, for the memory plan (`chimed-ray plan`)
    memory_check: bool = True  # refuse, before any actor starts, a config the memory plan says cannot fit
    policy: GroupScale = field(default_factory=GroupScale)
    critic: GroupScale = field(default_factory=GroupScale)
    reference: GroupScale = field(default_factory=GroupScale)
    reward: GroupScale = field(default_factory=GroupScale)
    rollout: GroupScale = field(default_factory=lambda: GroupScale(num_workers=0))

    @property
    def offload_idle_models(self) -> bool:
        """Whether idle models leave the device between phases (see `offload_idle`)."""
        return self.placement == "colocate" if self.offload_idle is None else self.offload_idle

    def validate(self) -> None:
        self.deepspeed_scale(self.policy).validate()
        for role in ("policy", "critic", "reference", "reward"):
            check(getattr(self, role).num_workers >= 1, f"{role}.num_workers", "must be >= 1")
        if self.placement == "colocate":
            bundles = self.policy.num_workers
            for role in ROLES[1:]:
                group = getattr(self, role)
                check(group.num_workers <= bundles, f"{role}.num_workers",
                      f"colocated roles share the policy's {bundles} bundles; got {group.num_workers} workers")
            if self.use_gpu:
                share = sum(getattr(self, role).gpus_per_worker for role in ROLES if getattr(self, role).num_workers)
                check(share <= 1.0 + 1e-6, "gpus_per_worker", f"colocated roles share one GPU; their fractions sum to {share:g}")

    def deepspeed_scale(self, group: GroupScale) -> ScaleConfig:
        """The Ray Train-style ScaleConfig that `trainers/engine.py` builds DeepSpeed from."""
        return ScaleConfig(
            num_workers=max(group.num_workers, 1), use_gpu=self.use_gpu, cpus_per_worker=group.cpus_per_worker,
            gpus_per_worker=group.gpus_per_worker, zero_stage=self.zero_stage, offload_optimizer=self.offload_optimizer,
            offload_params=self.offload_params, precision=self.precision, check_cluster=False,
            gpu_memory_gb=self.gpu_memory_gb, memory_check=self.memory_check,
        )


@dataclass
class PPOFaultConfig:
    """Fault injection for testing recovery: right after the checkpoint of step `kill_at_step`,
    the driver kills rank `rank` of `role` (as a crashed node would), so the next call into it
    fails. A resumed run starts past that step and is not killed again."""

    kill_at_step: int = 0
    role: str = "reference"
    rank: int = 0

    def validate(self) -> None:
        check(self.kill_at_step >= 0, "kill_at_step", "must be >= 0 (0 disables)")
        check(self.role in ROLES, "role", f"expected one of {list(ROLES)}, got {self.role!r}")
        check(self.rank >= 0, "rank", "must be >= 0")


@dataclass
class PPOConfig:
    """PPO (or GRPO / RLOO / REINFORCE++ through `algorithm.advantage_estimator`) on Ray actor groups.

    `model` is the SFT policy (also the frozen reference). `critic_path` initialises the critic
    (default: the reward model, else the policy). Prompts are the first user turns of `data`
    (default: the bundled SFT dialogues). `optim` trains the policy, `critic_optim` the critic;
    their `micro_batch_size` is per worker and `epochs`/`max_steps` are unused (see `total_steps`).
    """

    output_dir: str = "outputs/ppo"
    run_name: str = "ppo"
    resume: bool = False
    # chimed_ray: our Ray actor groups. openrlhf: translate this config into OpenRLHF's
    # `openrlhf.cli.train_ppo_ray` and submit it as a Ray job (GPU clusters only).
    engine: Literal["chimed_ray", "openrlhf"] = "chimed_ray"
    total_steps: int = 20
    model: ModelConfig = field(default_factory=ModelConfig)
    critic_path: str = ""
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    critic_optim: OptimConfig = field(default_factory=OptimConfig)
    scale: PPOScaleConfig = field(default_factory=PPOScaleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fault: PPOFaultConfig = field(default_factory=PPOFaultConfig)

    def validate(self) -> None:
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(self.total_steps >= 1, "total_steps", "must be >= 1")
        batch, mini = self.rollout.batch_size, self.algorithm.mini_batch_size
        check(batch % mini == 0, "algorithm.mini_batch_size",
              f"{mini} must divide the rollout batch prompts_per_step x samples_per_prompt = {batch}")
        estimator = self.algorithm.advantage_estimator
        check(not self.algorithm.needs_groups or self.rollout.samples_per_prompt > 1, "rollout.samples_per_prompt",
              f"{estimator} compares answers to the same prompt; needs >= 2, got {self.rollout.samples_per_prompt}")
        trained = [("policy", self.optim)] + ([("critic", self.critic_optim)] if self.algorithm.needs_critic else [])
        for role, optim in trained:
            workers = getattr(self.scale, role).num_workers
            check(mini % (workers * optim.micro_batch_size) == 0, "algorithm.mini_batch_size",
                  f"{mini} must split into {workers} {role} workers x micro_batch_size {optim.micro_batch_size}")
        for role in ("reference", "reward") + (("rollout",) if self.rollout.separate_engine else ()):
            workers = getattr(self.scale, role).num_workers
            check(workers >= 1, f"scale.{role}.num_workers", "must be >= 1")
            check(batch % workers == 0, f"scale.{role}.num_workers",
                  f"the rollout batch of {batch} must split evenly over {workers} workers")
        check(batch % self.scale.policy.num_workers == 0, "scale.policy.num_workers",
              f"the rollout batch of {batch} must split evenly over {self.scale.policy.num_workers} workers")

    def gradient_accumulation(self, role: str) -> int:
        """Micro-batches per optimizer step on each worker of `role` (policy or critic)."""
        optim = self.optim if role == "policy" else self.critic_optim
        return self.algorithm.mini_batch_size // (getattr(self.scale, role).num_workers * optim.micro_batch_size)


@dataclass
class InferenceScale:
    """Ray Data actors for batch generation and scoring (rejection sampling)."""

    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 8

    def validate(self) -> None:
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be positive")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class RejectionSamplingConfig:
    """ChiMed-GPT's reward-guided rejection sampling: sample `samples_per_prompt` answers per prompt,
    score them, keep the best (`selection: top1`, or every answer scoring >= `threshold`), fine-tune
    on the kept set with the SFT stage, and repeat for `rounds` rounds.

    `sft` configures each round's fine-tuning (its model path and data files are filled in).
    With `score_final` the final model is sampled once more and its mean reward reported.
    """

    output_dir: str = "outputs/rejection_sampling"
    run_name: str = "rejection_sampling"
    rounds: int = 2
    samples_per_prompt: int = 4
    selection: Literal["top1", "threshold"] = "top1"
    threshold: float = 0.0
    max_prompts: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    inference: InferenceScale = field(default_factory=InferenceScale)
    sft: SFTConfig = field(default_factory=SFTConfig)
    score_final: bool = True  # sample and score once more with the final model
    seed: int = 0
    resume: bool = False  # skip finished rounds; resume the interrupted round's SFT

    def validate(self) -> None:
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(self.rounds >= 1, "rounds", "must be >= 1")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1")
        check(self.max_prompts >= 0, "max_prompts", "must be >= 0 (0 means all)")
        check(not self.sft.model.path, "sft.model.path", "is set by each round; use model.path for the start checkpoint")
        check(not self.sft.data.train_files, "sft.data.train_files", "is set by each round to the selected answers")


__all__ = [
    "AlgorithmConfig",
    "GroupScale",
    "InferenceScale",
    "PPOConfig",
    "PPOFaultConfig",
    "PPOScaleConfig",
    "RejectionSamplingConfig",
    "RewardConfig",
    "RewardSourceConfig",
    "RolloutConfig",
    "SamplingConfig",
]
