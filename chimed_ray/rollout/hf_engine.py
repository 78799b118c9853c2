"""HF `generate` with the KV cache, in micro-batches of prompts of similar length.

On the policy workers the engine wraps the training module itself, so it always samples from the
latest weights and needs no sync; in a separate rollout group it owns a copy of the model that PPO
refreshes after every update (bucket by bucket through `distributed/weight_sync.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from chimed_ray.data.padding import left_pad
from chimed_ray.rollout.base import Generation, SamplingParams, trim_at_eos

if TYPE_CHECKING:
    import torch

    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.distributed.weight_sync import Bucket, SyncStats


class HFEngine:
    """Sample answers with `model.generate`.

    Args:
        model: An HF causal LM (or a DeepSpeed engine's `.module`).
        eos_token_ids: Ids that end an answer.
        pad_token_id: Id used for left padding of prompts.
        batch_size: Prompts per `generate` call (0: all at once).
        sort_by_length: Cut micro-batches from the prompts sorted by length (less left padding).
    """

    def __init__(self, model, eos_token_ids: Sequence[int], pad_token_id: int, batch_size: int = 0,
                 sort_by_length: bool = True) -> None:
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.sort_by_length = sort_by_length

    @classmethod
    def from_path(cls, path: str, eos_token_ids: Sequence[int], pad_token_id: int, precision: str = "fp32",
                  device: str = "cpu", batch_size: int = 0, trust_remote_code: bool = False) -> "HFEngine":
        """An engine owning its own copy of the checkpoint at `path`."""
        from chimed_ray.models import load_causal_lm

        model = load_causal_lm(path, precision, trust_remote_code).to(device).eval()
        return cls(model, eos_token_ids, pad_token_id, batch_size)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """One answer per prompt (generated ids only, trimmed after the first EOS).

        Micro-batches of `batch_size` prompts are cut from the prompts sorted by length, so a
        short prompt is never left-padded to a long one's width; answers return in input order.
        """
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        size = self.batch_size or max(len(prompts), 1)
        order = list(range(len(prompts)))
        if self.sort_by_length:
            order.sort(key=lambda index: len(prompts[index]))
        answers: list[list[int]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                for index, answer in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params)):
                    answers[index] = answer
        finally:
            self.model.train(was_training)
        return answers

    def generate_with_logprobs(self, prompts: list[list[int]], params: SamplingParams) -> Generation:
        """Answers, then their log-probs from one teacher-forced forward with these same weights
        (the policy's own log-prob function, so behaviour and policy log-probs are comparable)."""
        from chimed_ray.distributed.batch import build_rollout_batch
        from chimed_ray.distributed.forward import no_grad_in_micro_batches, response_logprobs

        answers = self.generate(prompts, params)
        batch = build_rollout_batch(prompts, answers, list(range(len(prompts))), self.pad_token_id, self.eos_token_ids)
        device = next(self.model.parameters()).device
        logprobs = no_grad_in_micro_batches(
            lambda micro: response_logprobs(self.model, micro.to(device), params.temperature)[0],
            batch, self.batch_size or batch.size,
        )  # [B, R]
        lengths = batch.response_mask.sum(dim=1).tolist()
        return Generation(answers, [row[:length].tolist() for row, length in zip(logprobs, lengths)])

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        import torch

        device = next(self.model.parameters()).device
        input_ids, attention_mask = left_pad(prompts, self.pad_token_id, device)
        sampling = {"do_sample": False} if params.greedy else {
            "do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        }
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=params.max_new_tokens,
                eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, use_cache=True, **sampling,
            )
        generated = output[:, input_ids.shape[1] :].tolist()  # [B, <= max_new_tokens]
        eos = set(self.eos_token_ids)
        pad = self.pad_token_id if self.pad_token_id not in eos else None
        return [trim_at_eos(ids, eos, pad) for ids in generated]

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> None:
        """Copy a full `state_dict` into the model in place (shapes and names must match)."""
        missing = [name for name in self.model.state_dict() if name not in state_dict]
        if missing:
            raise KeyError(f"weight sync: {len(missing)} parameters missing, e.g. {missing[:3]}")
        self.load_named(list(state_dict.items()))

    def load_named(self, weights: list[tuple[str, "torch.Tensor"]]) -> None:
        """Copy some named tensors into the model in place (one bucket of a collective sync)."""
        import torch

        own = self.model.state_dict()
        unknown = [name for name, _ in weights if name not in own]
        if unknown:
            raise KeyError(f"weight sync: the engine's model has no parameter {unknown[0]!r} ({len(unknown)} unknown)")
        with torch.no_grad():
            for name, tensor in weights:
                own[name].copy_(tensor.to(device=own[name].device, dtype=own[name].dtype))

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        return self.model.state_dict()

    def add_adapters(self, lora: "LoRAConfig") -> None:
        """Wrap the model in LoRA adapters like the policy's, for `rollout.lora_sync=adapter`."""
        from chimed_ray.models.lora import apply_lora

        self.model = apply_lora(self.model, lora).eval().requires_grad_(False)

    def open_weight_sync(self, address: tuple[str, int], rank: int, world_size: int, backend: str) -> None:
        from chimed_ray.distributed.weight_sync import SyncGroup

        self.sync_group = SyncGroup(address, rank, world_size, backend)

    def receive_weights(self, buckets: list["Bucket"]) -> "SyncStats":
        from chimed_ray.distributed.weight_sync import receive_buckets

        return receive_buckets(self.sync_group, buckets, next(self.model.parameters()).device, self.load_named)
