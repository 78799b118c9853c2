"""ChiMed-GPT's reward-guided rejection sampling. `chimed-ray rejection-sampling --config
configs/rejection_sampling/tiny.yaml`

Each round:
  1. sample K answers to every prompt with the current model (Ray Data actor pool),
  2. score every answer with the reward model or a rule function (a second actor pool),
  3. keep the best answer per prompt (or every answer scoring >= threshold),
  4. write the kept answers as SFT data (ShareGPT JSONL) and fine-tune on them with the SFT stage,
then the fine-tuned model samples the next round. Mean reward of the kept vs all answers is
reported per round. `resume=true` continues an interrupted run by round, and within the round's SFT.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from chimed_ray.config import dump_config, to_dict
from chimed_ray.config.rlhf import RejectionSamplingConfig
from chimed_ray.rollout.base import SamplingParams
from chimed_ray.utils.files import InputError, atomic_directory, atomic_write_json, atomic_write_text

SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
# Per round: the reward metrics of its sample (answers selected), then all metrics (round done).
SAMPLED_FILE, ROUND_FILE = "sampled.json", "round.json"


def run_rejection_sampling(config: RejectionSamplingConfig) -> Path:
    """Run `rounds` rounds; returns `<output_dir>/final`, the last round's fine-tuned model.

    With `resume=true` finished rounds are skipped, a round whose answers were selected goes
    straight to its SFT, and that SFT resumes from its own last checkpoint.
    """
    from chimed_ray.models import load_tokenizer
    from chimed_ray.models.heads import require_hf_checkpoints
    from chimed_ray.planning.check import check_memory
    from chimed_ray.rollout.prompts import load_prompts
    from chimed_ray.trainers.launch import ensure_ray
    from chimed_ray.utils.files import absolute_path
    from chimed_ray.utils.tracking import RunTracker

    check_memory("rejection-sampling", config)  # refuses, in one line, a GPU config that cannot fit
    require_hf_checkpoints({"model.path": absolute_path(config.model.path), "reward.path": absolute_path(config.reward.path)})
    output = Path(absolute_path(config.output_dir))
    output.mkdir(parents=True, exist_ok=True)
    dump_config(config, output / "config.yaml")
    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path, config.model.trust_remote_code)
    prompts = load_prompts(config.data, tokenizer, config.sampling.max_prompt_length, config.max_prompts)
    ensure_ray()
    done, checkpoint = finished_rounds(output, config.rounds) if config.resume else (0, None)
    if checkpoint is None:
        checkpoint = absolute_path(config.model.path) or str(save_initial_model(config, tokenizer, output / "initial"))
    elif done:
        print(f"[chimed-ray rejection-sampling] resuming after round {done} ({checkpoint})", flush=True)
    tracker = RunTracker(output, config.rounds, done, progress_bar=False, description="rejection-sampling",
                         tracking=config.sft.logging, run_config=to_dict(config), run_name=config.run_name)
    for round_index in range(done + 1, config.rounds + 1):
        checkpoint, metrics = run_round(config, checkpoint, prompts, round_index, output / f"round_{round_index}")
        tracker.log(round_index, metrics)
        print(f"[chimed-ray rejection-sampling] round {round_index}: " + ", ".join(
            f"{key} {value:.4g}" for key, value in metrics.items() if key.startswith(("reward", "final"))), flush=True)
    final = output / "final"
    with atomic_directory(final) as tmp:
        shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
    tracker.log_artifacts(final)
    tracker.close()
    return final


def finished_rounds(output: Path, rounds: int) -> tuple[int, str | None]:
    """How many rounds in a row are finished (their ROUND_FILE written), and the last one's model."""
    from chimed_ray.models import is_hf_checkpoint

    done, checkpoint = 0, None
    for round_index in range(1, rounds + 1):
        round_dir = output / f"round_{round_index}"
        if not ((round_dir / ROUND_FILE).is_file() and is_hf_checkpoint(round_dir / "sft" / "final")):
            break
        done, checkpoint = round_index, str(round_dir / "sft" / "final")
    return done, checkpoint


def run_round(
    config: RejectionSamplingConfig, checkpoint: str, prompts: list, round_index: int, round_dir: Path
) -> tuple[str, dict[str, float]]:
    """One round from `checkpoint`; returns the fine-tuned model and the round's metrics. Each
    step's result is kept on disk, so a resumed round redoes only what it had not finished."""
    from chimed_ray.models import is_hf_checkpoint
    from chimed_ray.trainers.launch import run_ray_train

    started = time.perf_counter()
    data_file, sampled = round_dir / "selected.jsonl", round_dir / SAMPLED_FILE
    if config.resume and data_file.is_file() and sampled.is_file():
        metrics = json.loads(sampled.read_text(encoding="utf-8"))  # answers already selected
    else:
        # 1-2. K answers per prompt from the current model, each scored.
        scored = sample_and_score_prompts(config, checkpoint, prompts, round_index)
        # 3. Keep the best answer(s) of each prompt.
        kept = select_answers(scored, config.selection, config.threshold)
        if not kept:
            raise InputError(f"round {round_index}: no answer scored >= threshold {config.threshold}; lower it")
        write_sharegpt(data_file, kept, prompts)
        metrics = {**reward_metrics(scored, kept), "time/sample_and_score_s": time.perf_counter() - started}
        atomic_write_json(sampled, metrics)

    # 4. Fine-tune on the kept answers with the SFT stage, starting from the current model.
    sft_final = round_dir / "sft" / "final"
    if config.resume and is_hf_checkpoint(sft_final):
        checkpoint = str(sft_final)
    else:
        sft = replace(config.sft, output_dir=str(round_dir / "sft"), run_name=f"{config.run_name}_round_{round_index}",
                      resume=config.resume, model=replace(config.sft.model, path=checkpoint),
                      data=replace(config.sft.data, train_files=[str(data_file)]))
        checkpoint = str(run_ray_train("sft", sft))

    metrics["time/round_s"] = time.perf_counter() - started
    if config.score_final and round_index == config.rounds:
        # How good is the model we hand over? Score a fresh sample from it.
        final_scored = sample_and_score_prompts(config, checkpoint, prompts, 0)
        metrics["final/reward_mean"] = _mean([row["score"] for row in final_scored])
    atomic_write_json(round_dir / ROUND_FILE, metrics)  # written last: the round is finished
    return checkpoint, metrics


def sample_and_score_prompts(
    config: RejectionSamplingConfig, checkpoint: str, prompts: list, round_index: int
) -> list[dict[str, Any]]:
    """K scored answers per prompt from `checkpoint` (seeded by the round)."""
    from chimed_ray.rollout.batch_inference import sample_and_score
    from chimed_ray.utils.files import absolute_path

    k = config.samples_per_prompt
    rows = [{"row_id": p * k + i, "prompt_index": p, "prompt_ids": prompt.token_ids}
            for p, prompt in enumerate(prompts) for i in range(k)]
    sampling = config.sampling
    params = SamplingParams(sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.top_k,
                            seed=config.seed * 1_000_003 + round_index * 10_007)
    scale = config.inference
    return sample_and_score(rows, checkpoint, params, absolute_path(config.reward.path), config.reward.function,
                            scale.num_actors, scale.cpus_per_actor, scale.gpus_per_actor, scale.batch_size)


def reward_metrics(scored: list[dict[str, Any]], kept: list[dict[str, Any]]) -> dict[str, float]:
    """Mean reward of all sampled answers vs the kept ones (the selection's gain)."""
    all_scores, kept_scores = [row["score"] for row in scored], [row["score"] for row in kept]
    return {"reward/all_mean": _mean(all_scores), "reward/selected_mean": _mean(kept_scores),
            "reward/all_max": max(all_scores), "selected/count": float(len(kept))}


def select_answers(scored: list[dict[str, Any]], selection: str, threshold: float) -> list[dict[str, Any]]:
    """`top1`: the highest-scoring answer of each prompt; `threshold`: every answer >= threshold.

    Ties keep the earliest sample, so selection is deterministic.
    """
    if selection == "threshold":
        return [row for row in scored if row["score"] >= threshold]
    best: dict[int, dict[str, Any]] = {}
    for row in scored:
        current = best.get(row["prompt_index"])
        if current is None or row["score"] > current["score"]:
            best[row["prompt_index"]] = row
    return [best[index] for index in sorted(best)]


def write_sharegpt(path: Path, kept: list[dict[str, Any]], prompts: list) -> Path:
    """Write the kept answers as ShareGPT dialogues (the SFT stage's input format)."""
    lines = []
    for row in kept:
        turns = [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in prompts[row["prompt_index"]].messages]
        turns.append({"from": "gpt", "value": row["answer_text"]})
        lines.append(json.dumps({"conversations": turns, "score": float(row["score"])}, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def save_initial_model(config: RejectionSamplingConfig, tokenizer, directory: Path) -> Path:
    """With no `model.path`, a fresh tiny model is saved once so every actor loads the same one."""
    from chimed_ray.models import build_causal_lm, save_hf_checkpoint

    model = build_causal_lm("", config.model.tiny, tokenizer, seed=config.seed)
    return save_hf_checkpoint(model, tokenizer, directory)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / max(len(values), 1))


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config

    config, _ = parse_stage_config("rejection-sampling", RejectionSamplingConfig, argv)
    run_rejection_sampling(config)
    return 0
