"""HF `generate` with the KV cache, batched over left-padded prompts.

On the policy workers the engine wraps the training module itself, so it always samples from the
latest weights and `load_weights` is never needed; in a separate rollout group it owns a copy of
the model that PPO refreshes after every update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from chimed_ray.rollout.base import SamplingParams, trim_at_eos

if TYPE_CHECKING:
    import torch


class HFEngine:
    """Sample answers with `model.generate`.

    Args:
        model: An HF causal LM (or a DeepSpeed engine's `.module`).
        eos_token_ids: Ids that end an answer.
        pad_token_id: Id used for left padding of prompts.
        batch_size: Prompts per `generate` call (0: all at once).
    """

    def __init__(self, model, eos_token_ids: Sequence[int], pad_token_id: int, batch_size: int = 0) -> None:
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size

    @classmethod
    def from_path(cls, path: str, eos_token_ids: Sequence[int], pad_token_id: int, precision: str = "fp32",
                  device: str = "cpu", batch_size: int = 0, trust_remote_code: bool = False) -> "HFEngine":
        """An engine owning its own copy of the checkpoint at `path`."""
        from chimed_ray.models import load_causal_lm

        model = load_causal_lm(path, precision, trust_remote_code).to(device).eval()
        return cls(model, eos_token_ids, pad_token_id, batch_size)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """One answer per prompt (generated ids only, trimmed after the first EOS)."""
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        size = self.batch_size or max(len(prompts), 1)
        answers: list[list[int]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), size):
                answers.extend(self._generate_batch(prompts[start : start + size], params))
        finally:
            self.model.train(was_training)
        return answers

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
        """Copy `state_dict` into the model in place (shapes and names must match)."""
        import torch

        own = self.model.state_dict()
        missing = [name for name in own if name not in state_dict]
        if missing:
            raise KeyError(f"weight sync: {len(missing)} parameters missing, e.g. {missing[:3]}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state_dict[name].to(device=tensor.device, dtype=tensor.dtype))


def left_pad(prompts: list[list[int]], pad_token_id: int, device: Optional["torch.device"] = None):
    """Left-pad prompts to one width: `(input_ids [B, P], attention_mask [B, P])`."""
    import torch

    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def right_pad(rows: list[list[int]], pad_token_id: int):
    """Right-pad token rows to one width: `(input_ids [B, T], attention_mask [B, T])`."""
    import torch

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
