"""Session-wide fixtures: one local Ray cluster and one tiny checkpoint for the whole test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the trained-tokenizer cache inside the test session so runs do not depend on ~/.cache.
os.environ.setdefault("CHIMED_RAY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one (starting Ray costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tokenizer():
    """The byte-level BPE tokenizer trained on the bundled corpus (with the ChiMed chat template)."""
    from chimed_ray.models import load_tokenizer

    return load_tokenizer("")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A freshly initialised tiny LLaMA saved as an HF checkpoint directory (safetensors)."""
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, save_hf_checkpoint

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=0)
    return save_hf_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")
