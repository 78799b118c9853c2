"""Helpers of the OpenRLHF tests: configs translated, and the flags fixture read from OpenRLHF's source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GPU_13B = str(REPO / "configs" / "ppo" / "gpu_13b.yaml")


@pytest.fixture(scope="session")
def openrlhf_flags() -> dict:
    """`{"--flag": {"nargs", "type", "choices"}}` of the pinned OpenRLHF (scripts/openrlhf_flags.py)."""
    from chimed_ray.integrations.openrlhf import OPENRLHF_VERSION

    fixture = json.loads((HERE / "train_ppo_ray_flags.json").read_text(encoding="utf-8"))
    assert fixture["openrlhf_version"] == OPENRLHF_VERSION, "regenerate with scripts/openrlhf_flags.py"
    return fixture["flags"]


@pytest.fixture(scope="session")
def translated():
    """`translated(*overrides) -> Translation` of configs/ppo/gpu_13b.yaml with the overrides."""
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig
    from chimed_ray.integrations.openrlhf import Handover, translate

    handover = Handover(actor_dir="/shared/ppo/openrlhf/actor", prompts_file="/shared/ppo/openrlhf/prompts.jsonl",
                        work_dir="/shared/ppo/openrlhf")

    def run(*overrides: str, gpus_per_node: int = 8):
        config = load_config(PPOConfig, GPU_13B, ["engine=openrlhf", *overrides])
        return translate(config, handover, gpus_per_node)

    return run


def parsed_flags(argv: list[str]) -> dict[str, list[str]]:
    """`--flag v1 v2 --switch` as `{"--flag": ["v1", "v2"], "--switch": []}` (after the entrypoint)."""
    assert argv[:3] == ["python", "-m", "openrlhf.cli.train_ppo_ray"]
    flags: dict[str, list[str]] = {}
    current = None
    for token in argv[3:]:
        if token.startswith("--"):
            assert token not in flags, f"{token} given twice"
            current = flags[token] = []
        else:
            assert current is not None, f"value {token!r} before any flag"
            current.append(token)
    return flags


@pytest.fixture(scope="session")
def flags_of():
    return parsed_flags
