"""Ray Train runs on CPU: 2 workers, DeepSpeed ZeRO-2, gloo. Loss falls, every parameter changes,
checkpoints load with `from_pretrained`, and a run killed mid-way resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chimed_ray.config import PretrainConfig, SFTConfig, load_config
from chimed_ray.trainers.launch import run_ray_train
from chimed_ray.utils.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN = ["optim.max_steps=12", "logging.save_every=4", "logging.eval_every=6", "logging.log_every=1", "logging.progress_bar=false"]


def _pretrain(output_dir: Path, *extra: str) -> Path:
    config = load_config(PretrainConfig, CONFIGS / "pretrain" / "tiny.yaml", [f"output_dir={output_dir}", *PRETRAIN, *extra])
    return run_ray_train("pretrain", config)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _assert_learned(output_dir: Path, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    losses = [r["train/loss"] for r in read_metrics(output_dir / "metrics.jsonl") if "train/loss" in r]
    assert losses[-1] < losses[0] * 0.9, losses
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.fixture(scope="module")
def pretrain_run(ray_cluster, tmp_path_factory) -> Path:
    return _pretrain(tmp_path_factory.mktemp("pretrain"))


def test_pretrain_loss_falls_and_every_parameter_changes(pretrain_run, tokenizer):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm

    config = load_config(PretrainConfig, CONFIGS / "pretrain" / "tiny.yaml")
    initial = build_causal_lm("", config.model.tiny, tokenizer, seed=config.optim.seed)
    assert isinstance(config.model.tiny, TinyModelConfig)
    before = {k: v.detach().clone() for k, v in initial.state_dict().items()}
    _assert_learned(pretrain_run.parent, before, _weights(pretrain_run))
    records = read_metrics(pretrain_run.parent / "metrics.jsonl")
    assert any("eval/loss" in r for r in records)
    assert (pretrain_run.parent / "loss_curve.png").stat().st_size > 1000
    assert list((pretrain_run.parent / "tensorboard").glob("events.out.tfevents.*"))


def test_final_checkpoint_is_a_loadable_hf_directory(pretrain_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(pretrain_run))
    tokenizer = AutoTokenizer.from_pretrained(str(pretrain_run))
    ids = tokenizer("高血压患者应", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tokenizer)
    assert tokenizer.chat_template and "[bot]:" in tokenizer.chat_template


def test_packed_sft_from_the_pretrained_checkpoint(pretrain_run, tmp_path):
    # Packed (the main job's setting); unpacked SFT runs in the tracking and rejection-sampling tests.
    config = load_config(
        SFTConfig,
        CONFIGS / "sft" / "tiny.yaml",
        [f"model.path={pretrain_run}", f"output_dir={tmp_path}", "packing=true", "optim.micro_batch_size=2",
         "optim.max_steps=16", "optim.lr=3e-3",
         "logging.log_every=1", "logging.eval_every=8", "logging.save_every=8", "logging.progress_bar=false"],
    )
    final = run_ray_train("sft", config)
    _assert_learned(tmp_path, _weights(pretrain_run), _weights(final))
    state = json.loads(next((tmp_path / "ray" / "sft").glob("checkpoint_*/trainer_state.json")).read_text())
    assert state["step"] in (8, 16)


def test_killed_run_resumes_to_the_same_weights(pretrain_run, tmp_path):
    import ray.train

    kill = ["fault.kill_at_step=4", f"fault.marker={tmp_path / 'killed'}", "fault.rank=1"]
    with pytest.raises(ray.train.TrainingFailedError):
        _pretrain(tmp_path / "run", *kill)
    assert (tmp_path / "killed").exists()
    snapshot_steps = sorted(
        json.loads(p.read_text())["step"] for p in (tmp_path / "run" / "ray" / "pretrain").glob("checkpoint_*/trainer_state.json")
    )
    assert snapshot_steps == [4]
    resumed = _pretrain(tmp_path / "run", *kill, "resume=true")
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, 13)), steps  # steps 1-4 before the kill, 5-12 after the resume
    expected, got = _weights(pretrain_run), _weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_failure_config_replaces_a_killed_worker(pretrain_run, tmp_path):
    final = _pretrain(
        tmp_path / "run", "fault.kill_at_step=8", f"fault.marker={tmp_path / 'killed'}", "scale.max_failures=1"
    )
    assert (tmp_path / "killed").read_text().startswith("killed at step 8")
    expected, got = _weights(pretrain_run), _weights(final)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
