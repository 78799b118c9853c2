"""RL samples/s on CPU: our PPO engine (Ray actor groups) under each advantage estimator (GAE with
a critic, GRPO, RLOO, REINFORCE++), synchronous and pipelined (`rollout.async=true`: a separate
engine generates step t+1 while the policy trains on step t), vs TRL's GRPOTrainer, same tiny
model, same prompts, same batch shape, in one run, one table; then the reward curve of every run,
and, measured alone, what packing and length-sorted generation save.

    python benchmarks/ppo_throughput.py [--steps 8] [--prompts-per-step 4] [--samples-per-prompt 4]
                                        [--max-new-tokens 32] [--hidden-size 64] [--layers 2]
                                        [--estimators gae,grpo,rloo,reinforce_pp] [--async-estimators grpo]
                                        [--threads 1] [--lr 1e-5] [--no-ablations]

Both sides do the same work per step: sample prompts x samples answers with HF `generate` (KV
cache, temperature 1), score them with the same rule reward, compute reference log-probs for a KL
penalty (0.05), group-normalised advantages, and one optimizer step over the whole batch. The
figure is steady-state samples/s: answers per step divided by the wall time of a step, steps
after the first (which pays for warm-up) only. Start-up (Ray actors, TRL trainer construction)
is printed apart. A pipelined run adds a fourth group, the HF engine, which receives the weights
over the collective sync after every step and returns its behaviour log-probs (no old-log-prob
forward on the policy). Our synchronous critic-free runs use three actor groups (policy, reference, reward) on a local
Ray cluster, GAE a fourth (the critic, initialised from the policy, trained in parallel with it), one torch thread each (Ray sets OMP_NUM_THREADS from num_cpus=1); TRL runs in this
process with `--threads` torch threads (default 1, the same per process). TRL's default gradient
checkpointing is turned off, as ours is.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REWARD = "chimed_ray.rollout.rule_rewards:token_parity"
ESTIMATORS = "gae,grpo,rloo,reinforce_pp"


def tiny_checkpoint(directory: Path, hidden_size: int, layers: int) -> Path:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    shape = TinyModelConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 11 // 4, num_hidden_layers=layers)
    return save_hf_checkpoint(build_causal_lm("", shape, tokenizer, seed=0), tokenizer, directory / "model")


def run_ours(checkpoint: Path, output: Path, estimator: str, pipelined: bool,
             args: argparse.Namespace) -> tuple[float, float, dict[str, float], list[float]]:
    """(steady-state samples/s, wall seconds including actor start-up, mean seconds per phase, rewards)."""
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig
    from chimed_ray.trainers.ppo import run_ppo
    from chimed_ray.utils.tracking import read_metrics

    batch = args.prompts_per_step * args.samples_per_prompt
    config = load_config(PPOConfig, None, [
        f"output_dir={output}", f"model.path={checkpoint}", f"reward.function={REWARD}", f"total_steps={args.steps}",
        f"algorithm.advantage_estimator={estimator}", "algorithm.kl_coef=0.05", "algorithm.ppo_epochs=1",
        f"rollout.separate_engine={pipelined}", f"rollout.async={pipelined}", f"scale.rollout.num_workers={int(pipelined)}",
        f"algorithm.mini_batch_size={batch}", f"rollout.prompts_per_step={args.prompts_per_step}",
        f"rollout.samples_per_prompt={args.samples_per_prompt}", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.max_prompt_length=128", f"optim.micro_batch_size={batch}", f"optim.lr={args.lr}", "optim.warmup_ratio=0",
        "scale.policy.num_workers=1", "scale.reference.num_workers=1", "scale.reward.num_workers=1",
        "scale.critic.num_workers=1", f"critic_optim.micro_batch_size={batch}", "critic_optim.warmup_ratio=0",
        "logging.progress_bar=false", "logging.tensorboard=false", f"logging.save_every={args.steps}",
    ])
    started = time.perf_counter()
    run_ppo(config)
    wall = time.perf_counter() - started
    every = read_metrics(output / "metrics.jsonl")
    records = every[1:]
    phases = {key.split("/")[1][:-2]: statistics.mean(r[key] for r in records)
              for key in records[0] if key.startswith("time/")}
    return batch / phases["step"], wall, phases, [r["reward/mean"] for r in every]


def run_trl(checkpoint: Path, output: Path, prompts: list[str],
            args: argparse.Namespace) -> tuple[float, float, list[float]]:
    """(steady-state samples/s, wall seconds including trainer construction, rewards)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from chimed_ray.rollout.rule_rewards import token_parity

    def parity(completions, completion_ids, **_):
        return token_parity([], completions, completion_ids)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self._start = [], 0.0

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self._start)

    batch = args.prompts_per_step * args.samples_per_prompt
    config = GRPOConfig(
        output_dir=str(output), use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=args.steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=args.samples_per_prompt, max_completion_length=args.max_new_tokens, temperature=1.0,
        top_k=0, top_p=1.0, beta=0.05, num_iterations=1, learning_rate=args.lr, warmup_steps=0,
        lr_scheduler_type="constant", disable_tqdm=True, seed=0,
        gradient_checkpointing=False,  # TRL turns it on by default; our run does not use it either
    )
    timer = StepTimer()
    started = time.perf_counter()
    trainer = GRPOTrainer(model=str(checkpoint), reward_funcs=[parity], args=config,
                          train_dataset=Dataset.from_dict({"prompt": prompts}),
                          processing_class=AutoTokenizer.from_pretrained(str(checkpoint), padding_side="left"),
                          callbacks=[timer])
    trainer.train()
    wall = time.perf_counter() - started
    rewards = [record["reward"] for record in trainer.state.log_history if "reward" in record]
    return batch / statistics.mean(timer.seconds[1:]), wall, rewards


def ablations(checkpoint: Path, args: argparse.Namespace, repeats: int = 9) -> dict[str, tuple[float, float]]:
    """Each saving alone, in this process (one torch thread, like an actor): (before s, after s),
    medians of `repeats` interleaved before/after runs (robust to a busy machine), for a packed vs
    padded no-grad log-prob forward and train forward+backward on a batch of the runs' prompts
    with answers of 4-`max_new_tokens` tokens, and length-sorted vs unsorted generation in
    micro-batches of a quarter of the batch."""
    import torch

    import chimed_ray.distributed.packing as packing
    from chimed_ray.config import DataConfig
    from chimed_ray.distributed.batch import build_rollout_batch
    from chimed_ray.distributed.forward import response_logprobs
    from chimed_ray.distributed.policy import eos_token_ids
    from chimed_ray.models import load_causal_lm, load_tokenizer
    from chimed_ray.rollout.base import SamplingParams
    from chimed_ray.rollout.hf_engine import HFEngine
    from chimed_ray.rollout.prompts import load_prompts

    torch.set_num_threads(1)
    tokenizer, model = load_tokenizer(str(checkpoint)), load_causal_lm(str(checkpoint))
    batch_size = args.prompts_per_step * args.samples_per_prompt
    prompts = [p.token_ids for p in load_prompts(DataConfig(), tokenizer, 128, limit=batch_size)]
    generator = torch.Generator().manual_seed(0)
    answers = [torch.randint(5, len(tokenizer), (int(n),), generator=generator).tolist()
               for n in torch.randint(4, args.max_new_tokens + 1, (batch_size,), generator=generator)]
    batch = build_rollout_batch(prompts, answers, list(range(batch_size)), tokenizer.pad_token_id, eos_token_ids(tokenizer))
    can_pack = packing.can_pack

    def compare(before, after) -> tuple[float, float]:
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):
            for side, function in enumerate((before, after)):
                started = time.perf_counter()
                function()
                times[side].append(time.perf_counter() - started)
        return statistics.median(times[0]), statistics.median(times[1])

    def forward(packed: bool, train: bool):
        def run() -> None:
            packing.can_pack = can_pack if packed else (lambda *_: False)  # off: the padded forward
            with torch.set_grad_enabled(train):
                logprobs, entropy = response_logprobs(model, batch, with_entropy=train)
                if train:
                    (logprobs.sum() + entropy.sum()).backward()
            packing.can_pack = can_pack
        return run

    def generate(sort: bool):
        engine = HFEngine(model, eos_token_ids(tokenizer), tokenizer.pad_token_id, batch_size // 4, sort_by_length=sort)
        return lambda: engine.generate(prompts, SamplingParams(args.max_new_tokens, seed=0))

    results = {"score forward (packed)": compare(forward(False, False), forward(True, False)),
               "train forward+backward (packed)": compare(forward(False, True), forward(True, True)),
               "generate (length-sorted)": compare(generate(False), generate(True))}
    print(f"(the ablation batch is {1 - float(batch.attention_mask.float().mean()):.0%} padding)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the TRL process")
    parser.add_argument("--estimators", default=ESTIMATORS, help="comma-separated advantage estimators of our runs")
    parser.add_argument("--async-estimators", default="grpo", help="estimators also run pipelined (rollout.async)")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of every run (ours and TRL's)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the packing / sorted-generation timings")
    args = parser.parse_args()

    import ray
    import torch

    torch.set_num_threads(args.threads)

    from chimed_ray.config import DataConfig
    from chimed_ray.models import load_tokenizer
    from chimed_ray.rollout.prompts import load_prompts

    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        directory = Path(tmp)
        checkpoint = tiny_checkpoint(directory, args.hidden_size, args.layers)
        prompts = [p.text for p in load_prompts(DataConfig(), load_tokenizer(str(checkpoint)), 128,
                                                 limit=args.steps * args.prompts_per_step)]
        trl_rate, trl_wall, trl_rewards = run_trl(checkpoint, directory / "trl", prompts, args)
        started = time.perf_counter()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        runs = [(name, False) for name in args.estimators.split(",") if name]
        runs += [(name, True) for name in args.async_estimators.split(",") if name]
        ours = {f"{name}{' async' if pipelined else ''}": run_ours(checkpoint, directory / f"{name}-{pipelined}", name,
                                                                   pipelined, args) for name, pipelined in runs}
        ray.shutdown()
        saved = {} if args.no_ablations else ablations(checkpoint, args)

    batch = args.prompts_per_step * args.samples_per_prompt
    print(f"\nRL on CPU, tiny LLaMA (hidden {args.hidden_size}, {args.layers} layers), {batch} samples/step "
          f"({args.prompts_per_step} prompts x {args.samples_per_prompt}), {args.max_new_tokens} new tokens, "
          f"{args.steps} steps")
    print(f"{'engine':<32}{'estimator':<14}{'samples/s (steady)':>20}{'wall s (with start-up)':>26}{'vs TRL':>9}")
    for name, (rate, wall, _, _) in ours.items():
        print(f"{'chimed-ray (Ray actors)':<32}{name:<14}{rate:>20.2f}{wall:>26.1f}{rate / trl_rate:>8.2f}x")
    print(f"{f'TRL GRPOTrainer ({args.threads} thr)':<32}{'grpo':<14}{trl_rate:>20.2f}{trl_wall:>26.1f}{1.0:>8.2f}x")
    for name, (_, _, phases, _) in ours.items():
        print(f"chimed-ray {name} seconds per step: " + ", ".join(f"{phase} {s:.3f}" for phase, s in phases.items()))
    print(f"(ray.init took {ray_start:.1f}s, not counted)")
    print("\nreward/mean per step (rule reward: share of odd token ids)")
    for name, (_, _, _, rewards) in ours.items():
        print(f"{'chimed-ray ' + name:<28}" + " ".join(f"{r:.3f}" for r in rewards))
    print(f"{'TRL GRPOTrainer':<28}" + " ".join(f"{r:.3f}" for r in trl_rewards))
    if saved:
        print(f"\n{'each change alone (one process)':<36}{'before s':>10}{'after s':>10}{'speed-up':>10}")
        for name, (before, after) in saved.items():
            print(f"{name:<36}{before:>10.4f}{after:>10.4f}{before / after:>9.2f}x")


if __name__ == "__main__":
    main()
