"""Sharded construction: under ZeRO-3 each Ray Train rank builds only its partition of the model.

Both sides are measured in Ray workers with the same probe (`PeakRSS`, the kernel's resident-set
high-water mark): the peak host-memory increase of a ZeRO-3 SFT rank while it builds the model
(logged by the training loop as `memory/model_build_peak_mb`), and that of building the whole
model with the same stage code outside ZeRO-3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chimed_ray.config import SFTConfig, load_config
from chimed_ray.trainers.launch import run_ray_train
from chimed_ray.utils.tracking import read_metrics

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# ~60M parameters (240 MB in fp32): big enough that half the model is far more than the ~130 MB
# that lazy imports and zero.Init's bookkeeping cost either side; one short step keeps the run cheap.
SHAPE = ["model.tiny.hidden_size=768", "model.tiny.intermediate_size=2048", "model.tiny.num_hidden_layers=8",
         "model.tiny.num_attention_heads=12", "model.tiny.num_key_value_heads=4"]


def full_build_peak_mb(config: SFTConfig) -> float:
    """Peak host-memory increase (MiB) of building the stage's model whole, in this process."""
    from chimed_ray.models import load_tokenizer
    from chimed_ray.trainers.task import load_task
    from chimed_ray.utils.memory import PeakRSS

    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path)
    with PeakRSS() as peak:
        model = load_task("sft").build_model(config, tokenizer)
    assert not any(hasattr(param, "ds_tensor") for param in model.parameters())
    return peak.increase_mb


def test_zero3_rank_builds_its_partition_not_the_whole_model(ray_cluster, tmp_path):
    import ray
    import ray.cloudpickle

    config = load_config(SFTConfig, CONFIGS / "sft" / "tiny.yaml", [
        f"output_dir={tmp_path / 'sft'}", "model.path=", "scale.zero_stage=3", "optim.max_steps=1",
        "optim.micro_batch_size=1", "data.max_length=64", "logging.eval_every=0", "logging.save_every=0",
        "logging.log_every=1", "logging.progress_bar=false", "logging.tensorboard=false", *SHAPE,
    ])
    final = run_ray_train("sft", config)
    records = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    sharded_mb = next(r["memory/model_build_peak_mb"] for r in records if "memory/model_build_peak_mb" in r)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable by workers
    full_mb = ray.get(ray.remote(num_cpus=1)(full_build_peak_mb).remote(config))
    print(f"model build peak per rank: ZeRO-3 x2 {sharded_mb:.1f} MiB, whole model {full_mb:.1f} MiB")
    assert full_mb > 230  # the whole model is ~240 MB of fp32 weights
    assert sharded_mb < full_mb - 60  # a rank holds half the weights
    assert (final / "model.safetensors").is_file()  # ZeRO-3 gathered the partitions for the HF save
