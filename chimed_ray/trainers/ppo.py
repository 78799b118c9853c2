"""Stage 4, RLHF with PPO on Ray actor groups (GRPO, RLOO and REINFORCE++ through
`algorithm.advantage_estimator`). `chimed-ray ppo --config configs/ppo/tiny.yaml`

Each step, read top to bottom in `run_ppo`:
  1. sample prompts                 5. advantages (GAE with the critic, or a critic-free estimator)
  2. generate answers               6. whiten them (GAE, REINFORCE++; group estimators are not)
  3. score: old + reference         7. minibatch PPO epochs: clipped policy loss + entropy bonus,
     log-probs, values, rewards        clipped value loss
  4. token rewards: score at the    8. push the new weights to a separate rollout engine
     last token, KL penalty on all  9. log, checkpoint
     (or KL in the loss)

With `rollout.async=true` (a separate engine) steps 1-2 of step t+1 run on the engine while steps
3-8 of step t run on the other groups: one step off-policy, the importance ratios taken against
the engine's own (behaviour) log-probs, the weights synced at each step boundary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import ray

from chimed_ray.algorithms import (
    AdaptiveKLController,
    AdvantageInputs,
    FixedKLController,
    compute_advantages,
    kl_penalty,
    masked_mean,
    truncated_answers,
    token_level_rewards,
)
from chimed_ray.config import dump_config, to_dict
from chimed_ray.config.rlhf import PPOConfig
from chimed_ray.distributed.batch import Experience, build_rollout_batch, concat_rows
from chimed_ray.distributed.group import WorkerDiedError, gather
from chimed_ray.distributed.offload import Turns
from chimed_ray.distributed.policy import eos_token_ids
from chimed_ray.distributed.rollout import behaviour_logprobs
from chimed_ray.distributed.weight_sync import SyncReport, WeightSync
from chimed_ray.distributed.worker import mean_metrics
from chimed_ray.models import load_tokenizer
from chimed_ray.models.heads import require_hf_checkpoints
from chimed_ray.planning.check import check_memory
from chimed_ray.rollout.base import Generation, SamplingParams
from chimed_ray.rollout.prompts import Prompt, load_prompts
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
    check_memory("ppo", config)  # refuses, in one line, a GPU config that cannot fit
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
        # The engine starts from the (restored) policy; after each update it gets the new weights.
        sync = (WeightSync(groups.policy, groups.rollout, rollout_cfg.weight_sync, rollout_cfg.sync_bucket_mb,
                           "nccl" if config.scale.use_gpu else "gloo", rollout_cfg.lora_sync, config.model.lora)
                if groups.rollout is not None else None)
        if sync is not None:
            with turns.holding(groups.policy, "weights"), turns.holding(groups.rollout, "weights"):
                sync()
        engine_version = state.step  # the policy step whose weights the generator holds
        order = PromptOrder(len(prompts), config.optim.seed)
        tracker = RunTracker(output, config.total_steps, state.step, tensorboard=config.logging.tensorboard,
                             progress_bar=config.logging.progress_bar, description="ppo", tracking=config.logging,
                             run_config=to_dict(config), run_name=config.run_name)
        pipelined, pending = rollout_cfg.async_, None
        for step in range(state.step + 1, config.total_steps + 1):
            timer, step_started = PhaseTimer(), time.perf_counter()
            # 1-2. Sample prompts (each answered samples_per_prompt times) and generate answers, on
            # the policy workers or the separate engine. Pipelined (rollout.async), this batch was
            # started last step with the weights before that step's update, and the engine now
            # starts the next one while this one is scored and trained on (one step off-policy).
            with timer("generate"):
                current = pending or start_rollout(groups, turns, prompts, order, state.prompt_position, step,
                                                   engine_version, config)
                rollout, behaviour, staleness = finish_rollout(current, step, pad_id, eos_ids)
            pending = (start_rollout(groups, turns, prompts, order, state.prompt_position + len(current.chosen),
                                     step + 1, engine_version, config) if pipelined and step < config.total_steps else None)
            mask = rollout.response_mask

            # 3. Score (in parallel, or in turns): reference log-probs, values, rewards, and the old
            # log-probs (the behaviour policy's: the engine's own when pipelined, else the policy's).
            with timer("score"):
                old_refs = ([] if behaviour is not None
                            else turns.run(groups.policy, "logprobs", rollout, rollout_cfg.temperature))
                reference_refs = turns.run(groups.reference, "logprobs", rollout, rollout_cfg.temperature)
                value_refs = turns.run(groups.critic, "values", rollout) if groups.critic else []
                score_refs = turns.run(groups.reward, "score", rollout)
                old_logprobs = behaviour if behaviour is not None else concat_rows(gather(old_refs))  # [B, R]
                reference_logprobs = concat_rows(gather(reference_refs))  # [B, R]
                values = concat_rows(gather(value_refs)) if value_refs else None  # [B, R]
                scores = concat_rows(gather(score_refs))  # [B]

            # 4. Token-level rewards: the score on the last answer token, and -kl_coef * KL on every
            #    token unless the KL is a term of the policy loss instead (GRPO's kl_in_loss).
            kl = kl_penalty(old_logprobs, reference_logprobs, algo.kl_estimator) * mask  # [B, R]
            reward_kl_coef = 0.0 if algo.kl_in_loss else kl_controller.value
            token_rewards = token_level_rewards(scores, kl, mask, reward_kl_coef)  # [B, R]

            # 5-6. Advantages and returns. GAE and REINFORCE++ are whitened over the batch; GRPO and
            #      RLOO are normalised within their groups only (as verl and OpenRLHF do).
            advantages, returns = compute_advantages(algo.advantage_estimator, AdvantageInputs(
                # Outcome estimators (GRPO, RLOO) see the KL-regularised return r - beta * KL(seq).
                token_rewards=token_rewards, response_mask=mask, sequence_scores=token_rewards.sum(dim=1), values=values,
                group_ids=rollout.group_ids, gamma=algo.gamma, lam=algo.lam, norm_by_std=algo.norm_by_std,
                whiten=algo.whiten_advantages,
            ))
            experience = Experience(**{name: getattr(rollout, name) for name in ROLLOUT_FIELDS},
                                    old_logprobs=old_logprobs, advantages=advantages,
                                    returns=returns if values is not None else None, old_values=values,
                                    reference_logprobs=reference_logprobs if algo.kl_in_loss else None)

            # 7. PPO epochs over minibatches, policy and critic (in parallel, or in turns).
            policy_spec, critic_spec = loss_specs(config, step)
            with timer("train"):
                train_refs = turns.run(groups.policy, "train_step", experience, policy_spec, states="all")
                if groups.critic is not None:
                    train_refs += turns.run(groups.critic, "train_step", experience, critic_spec, states="all")
                train_metrics = mean_metrics(gather(train_refs))

            # 8. Weight sync at the step boundary: the engine samples the next batch with these
            # weights (pipelined: after it finishes the batch it is generating now).
            with timer("sync"):
                synced = None
                if sync is not None:
                    with turns.holding(groups.policy, "weights"), turns.holding(groups.rollout, "weights"):
                        synced = sync()
            engine_version = step

            # 9. Bookkeeping: KL controller, counters, metrics, checkpoint.
            mean_kl = float((kl.sum(dim=1)).mean())
            kl_controller.update(mean_kl, rollout.size)
            state = replace(state, step=step, prompt_position=state.prompt_position + len(current.chosen),
                            kl_coef=kl_controller.value, samples=state.samples + rollout.size,
                            elapsed_s=state.elapsed_s + sum(timer.seconds.values()))
            metrics = step_metrics(scores, kl, rollout, train_metrics, timer.seconds, synced, kl_controller.value,
                                   truncated_answers(rollout.responses, mask, eos_ids, rollout_cfg.max_new_tokens))
            metrics["rollout/staleness"] = staleness
            tracker.log(step, {**metrics, "time/step_s": time.perf_counter() - step_started})
            if step == config.total_steps or (config.logging.save_every and step % config.logging.save_every == 0):
                save_checkpoint(groups, state, output, config.logging.keep_checkpoints)
                turns.offload_all(groups.by_role().values())  # saving brought every state back
            if step == config.fault.kill_at_step:
                groups.kill(config.fault.role, config.fault.rank)
        final = save_final(groups, output)
        tracker.log_artifacts(final)
        tracker.close()
        return final
    except ray.exceptions.RayActorError as exc:
        raise worker_died(groups, exc, output) from None
    finally:
        groups.shutdown()


@dataclass
class PendingRollout:
    """A batch being generated: its prompts, the weights generating it, the remote calls."""

    chosen: list[int]  # prompt indices of this step
    prompt_ids: list[list[int]]  # [B] each prompt samples_per_prompt times
    group_ids: list[int]  # [B]
    weights_version: int  # the policy step whose weights generate it
    refs: list  # one per generator rank: answers, or a `Generation` with behaviour log-probs
    with_logprobs: bool


def start_rollout(groups: PPOGroups, turns: Turns, prompts: list[Prompt], order: PromptOrder, position: int,
                  step: int, weights_version: int, config: PPOConfig) -> PendingRollout:
    """Steps 1-2 started: take the step's prompts and ask the generator for answers (no wait).
    Pipelined, the separate engine also returns its log-probs: they are the behaviour policy's."""
    rollout_cfg = config.rollout
    chosen = order.take(position, rollout_cfg.prompts_per_step)
    prompt_ids = [prompts[i].token_ids for i in chosen for _ in range(rollout_cfg.samples_per_prompt)]
    group_ids = [i for i in chosen for _ in range(rollout_cfg.samples_per_prompt)]
    sampling = SamplingParams(rollout_cfg.max_new_tokens, rollout_cfg.temperature, rollout_cfg.top_p,
                              rollout_cfg.top_k, seed=config.optim.seed * 100_003 + step)
    method = "sample" if rollout_cfg.async_ else "generate"
    refs = turns.run(groups.rollout or groups.policy, method, prompt_ids, sampling)
    return PendingRollout(chosen, prompt_ids, group_ids, weights_version, refs, rollout_cfg.async_)


def finish_rollout(pending: PendingRollout, step: int, pad_id: int, eos_ids: list[int]):
    """Wait for the answers: `(RolloutBatch, behaviour log-probs [B, R] or None, staleness)`, the
    staleness being how many policy updates the generating weights lag behind the policy."""
    parts = gather(pending.refs)  # rank order
    generations = parts if pending.with_logprobs else [Generation(part, []) for part in parts]
    answers = [ids for generation in generations for ids in generation.answers]
    rollout = build_rollout_batch(pending.prompt_ids, answers, pending.group_ids, pad_id, eos_ids)
    behaviour = behaviour_logprobs(generations, rollout.response_mask.shape[1]) if pending.with_logprobs else None
    return rollout, behaviour, (step - 1) - pending.weights_version


def step_metrics(scores, kl, rollout, train_metrics, seconds, synced: Optional[SyncReport], kl_coef,
                 truncated) -> dict[str, float]:
    """What one step logs: rewards, KL, policy/critic stats, lengths, the share of answers cut off
    at `max_new_tokens` (`truncated`, [B] bool), time and tokens/s per phase."""
    mask = rollout.response_mask
    answer_tokens, all_tokens = float(mask.sum()), float(rollout.attention_mask.sum())
    metrics = {
        "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "kl/per_sequence": float(kl.sum(dim=1).mean()), "kl/per_token": float(masked_mean(kl, mask)),
        "kl/coef": kl_coef, "response/length": float(mask.sum(dim=1).float().mean()),
        "response/clipped_fraction": float(truncated.float().mean()),
    }
    metrics.update({f"train/{key}": value for key, value in train_metrics.items()})
    tokens = {"generate": answer_tokens, "score": all_tokens, "train": all_tokens}
    for phase, elapsed in seconds.items():
        metrics[f"time/{phase}_s"] = elapsed
        if phase in tokens:
            metrics[f"throughput/{phase}_tokens_per_s"] = tokens[phase] / max(elapsed, 1e-9)
    metrics["throughput/samples_per_s"] = rollout.size / max(sum(seconds.values()), 1e-9)
    if synced is not None:
        metrics["sync/megabytes"] = synced.nbytes / 2**20
        metrics["sync/engine_peak_extra_mb"] = synced.engine_peak_extra_bytes / 2**20
        if synced.policy_peak_extra_bytes is not None:
            metrics["sync/policy_peak_extra_mb"] = synced.policy_peak_extra_bytes / 2**20
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
    from chimed_ray.config.arguments import parse_stage_config, stage_parser
    from chimed_ray.config import ConfigError

    parser = stage_parser("ppo", PPOConfig)
    parser.add_argument("--dry-run", action="store_true",
                        help="engine=openrlhf: export the data, print the OpenRLHF command, submit nothing")
    config, args = parse_stage_config("ppo", PPOConfig, argv, parser)
    if config.engine == "openrlhf":
        from chimed_ray.integrations.openrlhf import run_openrlhf_ppo
        from chimed_ray.integrations.openrlhf.job import OpenRLHFJobError

        try:
            run_openrlhf_ppo(config, dry_run=args.dry_run)
        except OpenRLHFJobError as exc:
            print(f"chimed-ray ppo: error: {exc}", flush=True)
            return 1
        return 0
    if args.dry_run:
        raise ConfigError("--dry-run: only engine=openrlhf has a command to print; our engine runs directly")
    run_ppo(config)
    return 0
