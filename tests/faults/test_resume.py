"""Resuming redoes nothing that was finished and logs nothing twice: rejection sampling resumes
by round and within the round's SFT; metrics.jsonl is cut back to the checkpoint's step; a
torn last line never breaks the loss plot (issue 12, items 9 and 11)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class RoundStub:
    """Stands in for sampling (Ray Data) and SFT (Ray Train); records every call."""

    def __init__(self, tiny_checkpoint: Path, crash_in: str = "") -> None:
        self.tiny_checkpoint, self.crash_in, self.calls = tiny_checkpoint, crash_in, []

    def model(self, checkpoint: str) -> str:
        """"start", or the round whose SFT made `checkpoint` (`round_N/sft/final`)."""
        return "start" if Path(checkpoint) == self.tiny_checkpoint else Path(checkpoint).parent.parent.name

    def sample(self, config, checkpoint, prompts, round_index):
        self.calls.append(("sample", round_index, self.model(checkpoint)))
        if self.crash_in == f"sample {round_index}":
            raise RuntimeError("killed while sampling")
        k = config.samples_per_prompt
        return [{"row_id": p * k + i, "prompt_index": p, "score": float(i), "answer_text": f"答案{i}"}
                for p in range(len(prompts)) for i in range(k)]

    def train(self, task, sft):
        self.calls.append(("sft", sft.run_name, sft.resume, self.model(sft.model.path)))
        if self.crash_in == sft.run_name:
            raise RuntimeError("killed during SFT")
        final = Path(sft.output_dir) / "final"
        shutil.copytree(self.tiny_checkpoint, final, dirs_exist_ok=True)
        return final


def rs_config(output: Path, tiny_checkpoint: Path, *extra: str):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import RejectionSamplingConfig

    return load_config(RejectionSamplingConfig, REPO / "configs/rejection_sampling/tiny.yaml", [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "reward.path=",
        "reward.function=chimed_ray.rollout.rule_rewards:answer_length", "rounds=3", "max_prompts=4",
        "samples_per_prompt=2", "score_final=false", "run_name=rs", *extra])


def run_with(stub: RoundStub, config, monkeypatch):
    from chimed_ray.trainers import launch, rejection_sampling

    monkeypatch.setattr(rejection_sampling, "sample_and_score_prompts", stub.sample)
    monkeypatch.setattr(launch, "run_ray_train", stub.train)
    monkeypatch.setattr(launch, "ensure_ray", lambda: None)
    return rejection_sampling.run_rejection_sampling(config)


def test_rejection_sampling_resumes_by_round_and_within_the_rounds_sft(tmp_path, tiny_checkpoint, monkeypatch):
    output = tmp_path / "rs"
    first = RoundStub(tiny_checkpoint, crash_in="rs_round_2")
    with pytest.raises(RuntimeError, match="killed during SFT"):
        run_with(first, rs_config(output, tiny_checkpoint), monkeypatch)
    assert first.calls == [("sample", 1, "start"), ("sft", "rs_round_1", False, "start"),
                           ("sample", 2, "round_1"), ("sft", "rs_round_2", False, "round_1")]

    resumed = RoundStub(tiny_checkpoint)
    final = run_with(resumed, rs_config(output, tiny_checkpoint, "resume=true"), monkeypatch)
    # Round 1 is done; round 2's answers were selected, so only its SFT runs, resuming itself
    # (same run name and storage, resume=true) from round 1's model; round 3 runs in full.
    assert resumed.calls == [("sft", "rs_round_2", True, "round_1"), ("sample", 3, "round_2"),
                             ("sft", "rs_round_3", True, "round_2")]
    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (final / "config.json").is_file()
    round_2 = json.loads((output / "round_2" / "round.json").read_text())
    assert round_2["reward/selected_mean"] == 1.0 and round_2["reward/all_mean"] == 0.5


def test_rejection_sampling_interrupted_while_sampling_resamples_only_that_round(tmp_path, tiny_checkpoint, monkeypatch):
    output = tmp_path / "rs"
    with pytest.raises(RuntimeError, match="killed while sampling"):
        run_with(RoundStub(tiny_checkpoint, crash_in="sample 2"), rs_config(output, tiny_checkpoint), monkeypatch)
    resumed = RoundStub(tiny_checkpoint)
    run_with(resumed, rs_config(output, tiny_checkpoint, "resume=true"), monkeypatch)
    assert [call[:2] for call in resumed.calls] == [("sample", 2), ("sft", "rs_round_2"), ("sample", 3), ("sft", "rs_round_3")]


def test_without_resume_rejection_sampling_starts_over(tmp_path, tiny_checkpoint, monkeypatch):
    output = tmp_path / "rs"
    run_with(RoundStub(tiny_checkpoint), rs_config(output, tiny_checkpoint, "rounds=1"), monkeypatch)
    again = RoundStub(tiny_checkpoint)
    run_with(again, rs_config(output, tiny_checkpoint, "rounds=1"), monkeypatch)
    assert [call[:2] for call in again.calls] == [("sample", 1), ("sft", "rs_round_1")]


def write_metrics(path: Path, steps: range, torn: bool) -> None:
    lines = [json.dumps({"step": step, "train/loss": 5.0 - 0.1 * step}) for step in steps]
    path.write_text("\n".join(lines) + "\n" + ('{"step": 7, "train/lo' if torn else ""))


def test_resumed_tracker_drops_the_steps_after_its_checkpoint(tmp_path):
    from chimed_ray.utils.tracking import RunTracker, read_metrics

    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, range(1, 7), torn=True)  # killed at step 7, last checkpoint at step 4
    tracker = RunTracker(tmp_path, total_steps=8, initial_step=4, tensorboard=False, progress_bar=False)
    for step in range(5, 9):
        tracker.log(step, {"train/loss": 1.0})
    tracker.close()
    steps = [record["step"] for record in read_metrics(metrics)]
    assert steps == list(range(1, 9))  # each step once, no torn line left behind
    assert len(metrics.read_text().splitlines()) == 8


def test_loss_plot_skips_a_torn_last_line(tmp_path):
    from chimed_ray.utils.tracking import plot_curves

    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, range(1, 5), torn=True)
    png = plot_curves(metrics, tmp_path / "loss.png")
    assert png is not None and png.stat().st_size > 0
