"""A separate rollout engine group: vLLM, or an HF engine on its own actors.

The policy's weights reach it through `distributed/weight_sync.py` after every update. With
`rollout.async=true` it also returns the behaviour log-probs of what it sampled, so the policy
can train one step off-policy with the right importance ratios.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Optional

from chimed_ray.distributed.worker import ModelSpec, Worker
from chimed_ray.rollout.base import Generation, derive_seed

if TYPE_CHECKING:
    import torch

    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.distributed.weight_sync import Bucket, SyncStats
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

    def _own_seed(self, params: "SamplingParams") -> "SamplingParams":
        # Mixed, not added: seed + rank would make rank 1's stream at step t rank 0's at step t + 1.
        if params.seed is None:
            return params
        return type(params)(**{**params.__dict__, "seed": derive_seed(params.seed, self.rank)})

    def generate(self, prompts: list[list[int]], params: "SamplingParams") -> list[list[int]]:
        return self.engine.generate(prompts, self._own_seed(params))

    def sample(self, prompts: list[list[int]], params: "SamplingParams") -> Generation:
        """Answers plus the behaviour log-prob of every answer token under this engine's weights."""
        return self.engine.generate_with_logprobs(prompts, self._own_seed(params))

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> "SyncStats":
        """Object-store sync: load a full state dict (Ray has already copied it into this process)."""
        from chimed_ray.distributed.weight_sync import PeakMemory, SyncStats

        with PeakMemory(self.device) as memory:
            self.engine.load_weights(state_dict)
        return SyncStats(sum(t.numel() * t.element_size() for t in state_dict.values()), memory.extra)

    def open_weight_sync(self, address: tuple[str, int], rank: int, world_size: int, backend: str,
                         lora: Optional["LoRAConfig"] = None) -> None:
        """Join the weight-sync group as `rank`; with `lora` (adapter sync) wrap the model in the
        same adapters first, so the policy's adapter names land on it."""
        if lora is not None:
            self.engine.add_adapters(lora)
        self.engine.open_weight_sync(address, rank, world_size, backend)

    def receive_weights(self, buckets: list["Bucket"]) -> "SyncStats":
        """Collective sync: load the buckets policy rank 0 broadcasts; returns bytes received."""
        return self.engine.receive_weights(buckets)

    def weights_digest(self) -> str:
        """A hash of the engine's weights (HF engine only), to check a sync in tests."""
        return state_digest(self.engine.state_dict())


def state_digest(state_dict: dict[str, "torch.Tensor"]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def behaviour_logprobs(generations: list[Generation], width: int) -> "torch.Tensor":
    """The engines' per-token log-probs (rank order) as `[B, width]`, zero past each answer, laid
    out like the answers of a `RolloutBatch`."""
    import torch

    rows = [row for generation in generations for row in generation.logprobs]
    logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
    for index, row in enumerate(rows):
        logprobs[index, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return logprobs
