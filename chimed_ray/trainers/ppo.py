"""Stage 4, RLHF with PPO on Ray actor groups (GRPO, RLOO and REINFORCE++ through
`algorithm.advantage_estimator`). `chimed-ray ppo --config configs/ppo/tiny.yaml`

Each step, read top to bottom in `run_ppo`:
  1. sample prompts                 5. advantages (GAE with the critic, or a critic-free estimator)
  2. generate answers               6. whiten the advantages
  3. score: old + reference         7. minibatch PPO epochs: clipped policy loss + entropy bonus,
     log-probs, values, rewards        clipped value loss
  4. token rewards: score at the    8. push the new weights to a separate rollout engine
     last token, KL penalty on all  9. log, checkpoint
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import ray

from chimed_ray.algorithms import (
    AdaptiveKLController,
    AdvantageInputs,
    FixedKLController,
    compute_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    token_level_rewards,
)
from chimed_ray.config import dump_config
from chimed_ray.config.rlhf import PPOConfig
from chimed_ray.distributed.batch import Experience, build_rollout_batch, concat_rows
from chimed_ray.distributed.group import WorkerDiedError, gather
from chimed_ray.distributed.offload import Turns
from chimed_ray.distributed.policy import eos_token_ids
from chimed_ray.distributed.rollout import sync_weights
from chimed_ray.distributed.worker import mean_metrics
from chimed_ray.models import load_tokenizer
from chimed_ray.models.heads import require_hf_checkpoints
from chimed_ray.rollout.base import SamplingParams
from chimed_ray.rollout.prompts import load_prompts
from chimed_ray.trainers.launch import ensure_ray
from chimed_ray.utils.files import absolute_path
from chimed_ray.trainers.ppo_groups import PPOGroups, loss_specs, start_groups
from chimed_ray.trainers.ppo_state import (
    DriverState,
    PhaseTimer,
    PromptOrder,
    latest_checkpoint,
    move_previous_run_aside,
    restore_checkpoint,
    save_checkpoint,
)
from chimed_ray.utils.tracking import RunTracker, plot_curves

ROLLOUT_FIELDS = ("sequences", "attention_mask", "response_mask", "group_ids")


def run_ppo(config: PPOConfig) -> Path:
    """Run PPO; returns `<output_dir>/final`, the trained policy as an HF directory."""
    config = resolve_paths(config)
    require_hf_checkpoints({"model.path": config.model.path, "reward.path": config.reward.path,
                            "critic_path": config.critic_path})
    algo, rollout_cfg, output = config.algorithm, config.rollout, Path(config.output_dir)
    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path, config.model.trust_remote_code)
    prompts = load_prompts(config.data, tokenizer, rollout_cfg.max_prompt_length, config.data.max_samples)
    pad_id, eos_ids = tokenizer.pad_token_id, eos_token_ids(tokenizer)
    resume_from = latest_checkpoint(output) if config.resume else None
    if resume_from is None:
        if config.resume:
            print(f"[chimed-ray ppo] resume=true but {output} has no checkpoint; starting fresh", flush=True)
        move_previous_run_aside(output)
    dump_config(config, output / "config.yaml")
    ensure_ray()
    groups = start_groups(config)
    try:
        state = restore_checkpoint(groups, resume_from) if resume_from else DriverState(kl_coef=algo.kl_coef)
        kl_controller = (AdaptiveKLController(state.kl_coef, algo.kl_target, algo.kl_horizon) if algo.kl_target
                         else FixedKLController(state.kl_coef))
        # Colocated roles take turns on the device: only the models a phase needs are on it.
        turns = Turns(config.scale.offload_idle_models)
        turns.offload_all(groups.by_role().values())  # a restored checkpoint brought states back
        if groups.rollout is not None:
            with turns.holding(groups.policy, "weights"), turns.holding(groups.rollout, "weights"):
                sync_weights(groups.policy, groups.rollout)  # the engine starts from the (restored) policy
        order = PromptOrder(len(prompts), config.optim.seed)
        tracker = RunTracker(output, config.total_steps, state.step, tensorboard=config.logging.tensorboard,
                             progress_bar=config.logging.progress_bar, description="ppo")
        generator = groups.rollout or groups.policy
        for step in range(state.step + 1, config.total_steps + 1):
            timer, step_started = PhaseTimer(), time.perf_counter()
            # 1. Sample prompts; each one is answered samples_per_prompt times.
            chosen = order.take(state.prompt_position, rollout_cfg.prompts_per_step)
            prompt_ids = [prompts[i].token_ids for i in chosen for _ in range(rollout_cfg.samples_per_prompt)]
            group_ids = [i for i in chosen for _ in range(rollout_cfg.samples_per_prompt)]
            sampling = SamplingParams(rollout_cfg.max_new_tokens, rollout_cfg.temperature, rollout_cfg.top_p,
                                      rollout_cfg.top_k, seed=config.optim.seed * 100_003 + step)

            # 2. Generate with the current policy (on the policy workers, or the separate engine).
            with timer("generate"):
                parts = gather(turns.run(generator, "generate", prompt_ids, sampling))  # rank order
            answers = [ids for part in parts for ids in part]
            rollout = build_rollout_batch(prompt_ids, answers, group_ids, pad_id, eos_ids)
            mask = rollout.response_mask

            # 3. Score: old and reference log-probs, values, rewards (in parallel, or in turns).
            with timer("score"):
                old_refs = turns.run(groups.policy, "logprobs", rollout, rollout_cfg.temperature)
                reference_refs = turns.run(groups.reference, "logprobs", rollout, rollout_cfg.temperature)
                value_refs = turns.run(groups.critic, "values", rollout) if groups.critic else []
                score_refs = turns.run(groups.reward, "score", rollout)
                old_logprobs = concat_rows(gather(old_refs))  # [B, R]
                reference_logprobs = concat_rows(gather(reference_refs))  # [B, R]
                values = concat_rows(gather(value_refs)) if value_refs else None  # [B, R]
                scores = concat_rows(gather(score_refs))  # [B]

            # 4. Token-level rewards: the score on the last answer token, -kl_coef * KL on every token.
            kl = kl_penalty(old_logprobs, reference_logprobs, algo.kl_estimator) * mask  # [B, R]
            token_rewards = token_level_rewards(scores, kl, mask, kl_controller.value)  # [B, R]

            # 5. Advantages and returns from the configured estimator; 6. whitening over the batch.
            advantages, returns = compute_advantages(algo.advantage_estimator, AdvantageInputs(
                # Outcome estimators (GRPO, RLOO) see the KL-regularised return r - beta * KL(seq).
                token_rewards=token_rewards, response_mask=mask, sequence_scores=token_rewards.sum(dim=1), values=values,
                group_ids=rollout.group_ids, gamma=algo.gamma, lam=algo.lam, whiten_gae=False,
            ))
            if algo.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
            experience = Experience(**{name: getattr(rollout, name) for name in ROLLOUT_FIELDS},
                                    old_logprobs=old_logprobs, advantages=advantages,
                                    returns=returns if values is not None else None, old_values=values)

            # 7. PPO epochs over minibatches, policy and critic (in parallel, or in turns).
            policy_spec, critic_spec = loss_specs(config, step)
            with timer("train"):
                train_refs = turns.run(groups.policy, "train_step", experience, policy_spec, states="all")
                if groups.critic is not None:
                    train_refs += turns.run(groups.critic, "train_step", experience, critic_spec, states="all")
                train_metrics = mean_metrics(gather(train_refs))

            # 8. Weight sync: a separate engine must sample from the updated policy next step.
            with timer("sync"):
                synced_bytes = 0
                if groups.rollout is not None:
                    with turns.holding(groups.policy, "weights"), turns.holding(groups.rollout, "weights"):
                        synced_bytes = sync_weights(groups.policy, groups.rollout)

            # 9. Bookkeeping: KL controller, counters, metrics, checkpoint.
            mean_kl = float((kl.sum(dim=1)).mean())
            kl_controller.update(mean_kl, rollout.size)
            state = replace(state, step=step, prompt_position=state.prompt_position + len(chosen),
                            kl_coef=kl_controller.value, samples=state.samples + rollout.size,
                            elapsed_s=state.elapsed_s + sum(timer.seconds.values()))
            metrics = step_metrics(scores, kl, rollout, train_metrics, timer.seconds, synced_bytes, kl_controller.value)
            tracker.log(step, {**metrics, "time/step_s": time.perf_counter() - step_started})
            if step == config.total_steps or (config.logging.save_every and step % config.logging.save_every == 0):
                save_checkpoint(groups, state, output, config.logging.keep_checkpoints)
                turns.offload_all(groups.by_role().values())  # saving brought every state back
            if step == config.fault.kill_at_step:
                groups.kill(config.fault.role, config.fault.rank)
        tracker.close()
        return save_final(groups, output)
    except ray.exceptions.RayActorError as exc:
        raise worker_died(groups, exc, output) from None
    finally:
        groups.shutdown()


def step_metrics(scores, kl, rollout, train_metrics, seconds, synced_bytes, kl_coef) -> dict[str, float]:
    """What one step logs: rewards, KL, policy/critic stats, lengths, time and tokens/s per phase."""
    mask = rollout.response_mask
    answer_tokens, all_tokens = float(mask.sum()), float(rollout.attention_mask.sum())
    metrics = {
        "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "kl/per_sequence": float(kl.sum(dim=1).mean()), "kl/per_token": float(masked_mean(kl, mask)),
        "kl/coef": kl_coef, "response/length": float(mask.sum(dim=1).float().mean()),
        "response/clipped_fraction": float((mask[:, -1] > 0).float().mean()),
    }
    metrics.update({f"train/{key}": value for key, value in train_metrics.items()})
    tokens = {"generate": answer_tokens, "score": all_tokens, "train": all_tokens}
    for phase, elapsed in seconds.items():
        metrics[f"time/{phase}_s"] = elapsed
        if phase in tokens:
            metrics[f"throughput/{phase}_tokens_per_s"] = tokens[phase] / max(elapsed, 1e-9)
    metrics["throughput/samples_per_s"] = rollout.size / max(sum(seconds.values()), 1e-9)
    metrics["sync/megabytes"] = synced_bytes / 2**20
    return metrics


def save_final(groups: PPOGroups, output: Path) -> Path:
    """The trained policy as `<output>/final` (and the critic as `<output>/critic`), HF format."""
    refs = groups.policy.async_run("save_hf", str(output / "final"))
    if groups.critic is not None:
        refs += groups.critic.async_run("save_hf", str(output / "critic"))
    gather(refs)
    plot_curves(output / "metrics.jsonl", output / "reward_curve.png", ("reward/mean", "kl/per_sequence"), title="ppo")
    print(f"[chimed-ray ppo] final policy: {output / 'final'}", flush=True)
    return output / "final"


def worker_died(groups: PPOGroups, exc: BaseException, output: Path) -> WorkerDiedError:
    """One line for a dead actor: which role, Ray's reason, and how to continue."""
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    checkpoint = latest_checkpoint(output)
    where = (f"rerun with resume=true to continue from its last checkpoint, {checkpoint.name}" if checkpoint
             else "no checkpoint was saved yet, so rerun from the start")
    return WorkerDiedError(f"the PPO {groups.find_actor(getattr(exc, 'actor_id', None))} actor died "
                           f"({reason}); {where} (output_dir={output})")


def resolve_paths(config: PPOConfig) -> PPOConfig:
    """Absolute local paths, so actors (other working directories) find them."""
    model = replace(config.model, path=absolute_path(config.model.path), tokenizer_path=absolute_path(config.model.tokenizer_path))
    reward = replace(config.reward, path=absolute_path(config.reward.path))
    data = replace(config.data, train_files=[absolute_path(p) if Path(p).exists() else p for p in config.data.train_files])
    return replace(config, output_dir=absolute_path(config.output_dir), model=model, reward=reward, data=data,
                   critic_path=absolute_path(config.critic_path))


def main(argv: Sequence[str]) -> int:
    from chimed_ray.cli import parse_stage_config

    config, _ = parse_stage_config("ppo", PPOConfig, argv)
    run_ppo(config)
    return 0
