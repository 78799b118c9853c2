"""A separate rollout engine group (vLLM, or an HF engine on its own actors) and weight sync.

After every policy update the driver calls `sync_weights(policy, rollout)`: the policy ranks
gather the full weights (a collective under ZeRO-3), rank 0's copy goes into Ray's object store
once, and every engine actor loads it straight from there (the driver never touches the bytes).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from chimed_ray.distributed.worker import ModelSpec, Worker

if TYPE_CHECKING:
    import torch

    from chimed_ray.distributed.group import ActorGroup
    from chimed_ray.rollout.base import SamplingParams


class RolloutWorker(Worker):
    """One generation engine; the group's actors split each step's prompts between them."""

    def setup(self, kind: str, model: ModelSpec, batch_size: int = 0, gpu_memory_utilization: float = 0.5) -> None:
        from chimed_ray.distributed.policy import eos_token_ids

        self.load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        eos, pad = eos_token_ids(self.tokenizer), self.tokenizer.pad_token_id
        if kind == "vllm":
            from chimed_ray.rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model.path, eos, pad, model.precision, gpu_memory_utilization, model.seed,
                                     model.trust_remote_code)
        else:
            from chimed_ray.rollout.hf_engine import HFEngine

            network = model.causal_lm(self.tokenizer).to(self.device).eval().requires_grad_(False)
            self.engine = HFEngine(network, eos, pad, batch_size)

    def generate(self, prompts: list[list[int]], params: "SamplingParams") -> list[list[int]]:
        if params.seed is not None:
            params = type(params)(**{**params.__dict__, "seed": params.seed + self.rank})
        return self.engine.generate(prompts, params)

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> int:
        """Load new weights; returns the bytes received (for the sync throughput metric)."""
        self.engine.load_weights(state_dict)
        return sum(t.numel() * t.element_size() for t in state_dict.values())

    def weights_digest(self) -> str:
        """A hash of the engine's weights (HF engine only), to check a sync in tests."""
        return state_digest(self.engine.model.state_dict())


def state_digest(state_dict: dict[str, "torch.Tensor"]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def sync_weights(policy: "ActorGroup", rollout: "ActorGroup") -> int:
    """Push the policy's current weights into every engine of `rollout`; returns bytes per engine."""
    import ray

    state_refs = policy.async_run("full_state_dict")  # rank 0 holds the weights, the others None
    received = ray.get(rollout.async_run("load_weights", state_refs[0]))
    ray.get(state_refs[1:])
    return int(received[0])
