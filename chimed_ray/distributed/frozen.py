"""The frozen roles: the reference policy (log-probs for the KL penalty) and the reward (a reward
model, or a Python function named in the config as `module:function`, run on the reward actors).

A frozen model is a replica in the run's dtype on every rank, or, with `scale.frozen_zero3`, a
ZeRO-3 inference shard (built partitioned, run through DeepSpeed's engine with no optimizer);
`ModelSpec.deepspeed` carries the choice."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from chimed_ray.distributed.worker import ModelSpec, Worker

if TYPE_CHECKING:
    import torch

    from chimed_ray.distributed.batch import RolloutBatch

RewardFunction = Callable[[list[str], list[str], list[list[int]]], list[float]]


def load_function(spec: str) -> RewardFunction:
    """Import `package.module:function`, with an error that names what is missing."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"reward.function={spec!r}: cannot import module {module_name!r}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ImportError(f"reward.function={spec!r}: {module_name} has no function {name!r}")
    return function


def frozen_states(model, device):
    """A frozen replica's weights, or a ZeRO-3 inference engine's partitions (it has no optimizer)."""
    from chimed_ray.distributed.offload import module_states

    return module_states(getattr(model, "module", model), device)


class ReferenceWorker(Worker):
    """The initial policy, frozen: log-probs of the sampled answers for the KL penalty."""

    def setup(self, model: ModelSpec, forward_batch_size: int) -> None:
        self.load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        self.model = model.frozen(model.causal_lm(self.tokenizer), self.device)
        self.forward_batch_size = forward_batch_size

    def device_states(self):
        return frozen_states(self.model, self.device)

    def logprobs(self, batch: "RolloutBatch", temperature: float = 1.0) -> "torch.Tensor":
        """`[b, R]` log-probs of the answer tokens under the reference policy."""
        from chimed_ray.distributed.forward import no_grad_in_micro_batches, response_logprobs

        self.ensure_on_device("weights")
        return no_grad_in_micro_batches(
            lambda micro: response_logprobs(self.model, micro.to(self.device), temperature)[0],
            batch, self.forward_batch_size,
        )


class RewardWorker(Worker):
    """Scores whole answers: a reward model read at the last token, or a rule function on text."""

    def setup(self, model: ModelSpec, function: str, forward_batch_size: int) -> None:
        self.load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        self.forward_batch_size = forward_batch_size
        self.function = load_function(function) if function else None
        self.model = None
        if self.function is None:
            self.model = model.frozen(model.scalar_model(self.tokenizer), self.device)

    def device_states(self):
        return None if self.model is None else frozen_states(self.model, self.device)

    def score(self, batch: "RolloutBatch") -> "torch.Tensor":
        """One score per answer: `[b]` float32."""
        import torch

        if self.function is not None:
            return self._score_with_function(batch)
        from chimed_ray.distributed.forward import no_grad_in_micro_batches
        from chimed_ray.models.heads import sequence_scores

        self.ensure_on_device("weights")
        return no_grad_in_micro_batches(
            lambda micro: sequence_scores(self.model, micro.sequences.to(self.device), micro.attention_mask.to(self.device)),
            batch, self.forward_batch_size,
        ).to(torch.float32)

    def _score_with_function(self, batch: "RolloutBatch") -> "torch.Tensor":
        import torch

        width = batch.prompt_width
        prompt_mask = batch.attention_mask[:, :width].bool()
        prompts = [self.tokenizer.decode(row[mask].tolist()) for row, mask in zip(batch.sequences[:, :width], prompt_mask)]
        answer_ids = [row[mask.bool()].tolist() for row, mask in zip(batch.responses, batch.response_mask)]
        answers = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in answer_ids]
        scores = self.function(prompts, answers, answer_ids)
        if len(scores) != batch.size:
            raise ValueError(f"reward function returned {len(scores)} scores for {batch.size} answers")
        return torch.tensor([float(s) for s in scores], dtype=torch.float32)
