"""Shared checks of the LoRA runs in the preference tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch


def _adapter_name(name: str) -> str:
    # The live model says `lora_A.default.weight`; a saved adapter file says `lora_A.weight`.
    return name.replace(".default.", ".")


@pytest.fixture(scope="session")
def initial_adapters() -> Callable[[Path, int, float, list[str]], dict[str, torch.Tensor]]:
    """Rebuild the adapters a Ray Train worker started from: it seeds torch with `optim.seed`
    (42), loads the checkpoint and applies LoRA, whose A matrices are drawn from that RNG."""

    def build(checkpoint: Path, rank: int, alpha: float, targets: list[str]) -> dict[str, torch.Tensor]:
        from transformers import AutoModelForCausalLM

        from chimed_ray.config.common import LoRAConfig
        from chimed_ray.models.lora import apply_lora

        torch.manual_seed(42)
        base = AutoModelForCausalLM.from_pretrained(str(checkpoint))
        model = apply_lora(base, LoRAConfig(enabled=True, rank=rank, alpha=alpha, target_modules=targets))
        return {_adapter_name(n): t.detach().clone() for n, t in model.state_dict().items() if ".lora_" in n}

    return build


@pytest.fixture(scope="session")
def assert_adapters_trained() -> Callable[[dict, dict, float], None]:
    """Every adapter tensor changed, yet A stayed within `max_drift` of its start, which shows
    the rebuilt start is the worker's (a different random A would differ by its full size)."""

    def check(trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], max_drift: float) -> None:
        trained = {_adapter_name(n): t for n, t in trained.items() if ".lora_" in n}
        assert sorted(trained) == sorted(initial), sorted(set(trained) ^ set(initial))[:3]
        unchanged = [name for name in initial if torch.equal(trained[name], initial[name])]
        assert not unchanged, f"adapter weights that did not change: {unchanged}"
        drift = max(float((trained[n] - initial[n]).abs().max()) for n in initial if ".lora_A." in n)
        assert drift < max_drift, drift

    return check
