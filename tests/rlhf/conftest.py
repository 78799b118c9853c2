"""Fixtures of the RLHF tests: the tiny "SFT" policy, a reward model trained once per session, and
helpers that compare checkpoints and read metrics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
RULE_REWARD = "chimed_ray.rollout.rule_rewards:token_parity"


def config_path(name: str) -> str:
    return str(REPO / "configs" / name)


def load_weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(str(path)))
    assert state, f"no safetensors in {directory}"
    return state


def assert_every_tensor_changed(before_dir: Path, after_dir: Path, skip: tuple[str, ...] = ()) -> None:
    """Every tensor of `after_dir` exists in `before_dir` and differs from it (TRL's check)."""
    import torch

    before, after = load_weights(before_dir), load_weights(after_dir)
    shared = [name for name in after if name in before and not name.startswith(skip)]
    assert shared, f"no common tensors between {before_dir} and {after_dir}"
    unchanged = [name for name in shared if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def metrics_by_step(output_dir: Path) -> dict[int, dict]:
    """metrics.jsonl merged per step (train and eval lines of one step become one dict)."""
    from chimed_ray.utils.tracking import read_metrics

    merged: dict[int, dict] = {}
    for record in read_metrics(Path(output_dir) / "metrics.jsonl"):
        merged.setdefault(int(record["step"]), {}).update(record)
    return merged


@pytest.fixture(scope="session")
def rlhf() -> SimpleNamespace:
    """The helpers above, as one fixture (test modules cannot import each other's conftest)."""
    return SimpleNamespace(config_path=config_path, load_weights=load_weights, metrics_by_step=metrics_by_step,
                           assert_every_tensor_changed=assert_every_tensor_changed, rule_reward=RULE_REWARD)


@pytest.fixture(scope="session")
def trained_reward_model(ray_cluster, tiny_checkpoint, tmp_path_factory) -> Path:
    """The reward stage run once on the bundled preference pairs, from the tiny policy."""
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import RewardConfig
    from chimed_ray.trainers.reward import run_reward

    output = tmp_path_factory.mktemp("reward")
    config = load_config(RewardConfig, config_path("reward/tiny.yaml"), [
        f"output_dir={output}", f"model.path={tiny_checkpoint}", "optim.max_steps=30", "optim.lr=2e-3",
        "logging.eval_every=0", "logging.save_every=0", "logging.progress_bar=false", "logging.tensorboard=false",
    ])
    return run_reward(config)
