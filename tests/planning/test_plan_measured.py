"""The plan's predicted peak against the measured one, on CPU in fp32.

On CPU the plan's figures are host RAM per worker process, from the same formulas as on GPU with
the device being host RAM: fp32 weights, gradients and AdamW moments (16 bytes per parameter,
ZeRO stage 0 on one worker), activations and logits of the micro-batch, and for generation the
weights, the KV cache and the prefill's transient. A fresh subprocess (memory_probe.py) measures
the peak RSS increase of two real training steps and of a sampled generation; each prediction
must fall within +-35% of its measurement. One bf16 forward+backward checks the bf16 formulas
(RMSNorm's fp32 copies, 2-byte activations and logits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chimed_ray.cli import stage_config_class
from chimed_ray.config.loader import load_config
from chimed_ray.planning import memory, stage_plan
from chimed_ray.planning.shapes import read_model_shape

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {  # three tiny LLaMA shapes: MHA, GQA with checkpointing, tied embeddings with a large vocabulary
    "mha": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": 8000},
    "gqa": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": 16000},
    "tied": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 2, "num_attention_heads": 8,
             "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": True},
}
TRAIN = {"mha": (4, 128, False), "gqa": (2, 256, True), "tied": (2, 128, False)}  # rows, tokens, checkpointing
GENERATE = {"mha": (8, 64, 32), "tied": (4, 64, 32)}  # rows, prompt tokens, new tokens
BF16 = ("mha", 4, 256)  # shape, rows, tokens: forward + backward in bf16
TOLERANCE = 0.35


def predicted_training_peak(model_dir: Path, rows: int, tokens: int, checkpointing: bool) -> int:
    """The SFT stage's plan for one CPU worker at ZeRO stage 0."""
    overrides = [f"model.path={model_dir}", f"optim.micro_batch_size={rows}", f"data.max_length={tokens}",
                 f"model.gradient_checkpointing={str(checkpointing).lower()}", "scale.num_workers=1",
                 "scale.zero_stage=0", "model.attn_implementation=sdpa"]
    plan = stage_plan("sft", load_config(stage_config_class("sft"), ROOT / "configs/sft/tiny.yaml", overrides))
    assert plan.device == "cpu"
    return plan.roles["model"].peak()[1]


def predicted_generation_peak(model_dir: Path, rows: int, prompt: int, new: int) -> int:
    """Rejection sampling's plan for one CPU sampling actor."""
    overrides = [f"model.path={model_dir}", "reward.path=", "reward.function=chimed_ray.rollout.rule_rewards:answer_length",
                 f"inference.batch_size={rows}", f"sampling.max_prompt_length={prompt}", f"sampling.max_new_tokens={new}",
                 "inference.gpus_per_actor=0", "model.attn_implementation=sdpa"]
    config = load_config(stage_config_class("rejection-sampling"), ROOT / "configs/rejection_sampling/tiny.yaml", overrides)
    return stage_plan("rejection-sampling", config).roles["sampler"].peak()[1]


def predicted_bf16_backward_peak(model_dir: Path, rows: int, tokens: int) -> int:
    """bf16 weights and gradients, activations and logits: the plan's bf16 formulas (no optimizer)."""
    shape = read_model_shape(str(model_dir), "model.path")
    weights_and_grads = 2 * 2 * shape.causal_lm_params()
    return (weights_and_grads + memory.training_activations(shape, rows, tokens, 2, "sdpa", checkpointing=False)
            + memory.training_logits(shape, rows, tokens, 2))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_predicted_peak_within_35_percent_of_measured_on_cpu(tmp_path):
    jobs, predictions = [], []
    for name, shape in SHAPES.items():
        model_dir = tmp_path / name
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 1024, **shape}))
        rows, tokens, checkpointing = TRAIN[name]
        jobs.append({"model_dir": str(model_dir), "mode": "train", "rows": rows, "tokens": tokens, "checkpointing": checkpointing})
        predictions.append((f"{name} train", predicted_training_peak(model_dir, rows, tokens, checkpointing)))
        if name in GENERATE:
            rows, prompt, new = GENERATE[name]
            jobs.append({"model_dir": str(model_dir), "mode": "generate", "rows": rows, "prompt_tokens": prompt, "new_tokens": new})
            predictions.append((f"{name} generate", predicted_generation_peak(model_dir, rows, prompt, new)))
    name, rows, tokens = BF16
    jobs.append({"model_dir": str(tmp_path / name), "mode": "train", "rows": rows, "tokens": tokens,
                 "checkpointing": False, "dtype": "bf16", "optimizer": False})
    predictions.append((f"{name} bf16 forward+backward", predicted_bf16_backward_peak(tmp_path / name, rows, tokens)))
    # A fixed mmap threshold returns freed tensors to the OS, so one job's garbage is not the next one's RSS.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, str(Path(__file__).with_name("memory_probe.py")), json.dumps(jobs)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    measured = json.loads(probe.stdout.strip().splitlines()[-1])
    report = [f"{label}: predicted {p / 2**20:.1f} MiB, measured {m / 2**20:.1f} MiB ({p / m - 1:+.0%})"
              for (label, p), m in zip(predictions, measured)]
    print("\n".join(report))
    for line, (_, predicted), actual in zip(report, predictions, measured):
        assert abs(predicted / actual - 1) <= TOLERANCE, line
