"""The policy role: samples answers (HF generate on its own weights), scores its log-probs, and
takes PPO steps (clipped surrogate + entropy bonus) under DeepSpeed.

With `model.lora` enabled the policy is a peft model: only its adapters train (and reach the
optimizer), a separate rollout engine receives the merged weights under the base model's names,
and the final save writes the merged HF model plus `adapter/`.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from chimed_ray.distributed.worker import ModelSpec, TrainableWorker, mean_metrics

if TYPE_CHECKING:
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.distributed.batch import Experience, RolloutBatch
    from chimed_ray.distributed.weight_sync import SyncStats
    from chimed_ray.rollout.base import SamplingParams


@dataclass
class PolicyLossSpec:
    """The policy update: PPO clip ranges, entropy bonus, KL-in-loss, epochs and minibatch size per rank."""

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float = 0.0  # > 1: dual-clip PPO's c; 0 off
    kl_coef: float = 0.0  # > 0: GRPO-style k3 KL to the reference in the loss (needs reference_logprobs)
    entropy_coef: float = 0.0
    agg_mode: str = "token_mean"
    ppo_epochs: int = 1
    mini_batch_size: int = 8  # rows per optimizer step on this rank
    micro_batch_size: int = 4
    temperature: float = 1.0
    seed: int = 0


def minibatch_order(size: int, mini_batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Row indices of each minibatch, reshuffled every epoch (same order on every rank's shard)."""
    for epoch in range(epochs):
        order = list(range(size))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for start in range(0, size, mini_batch_size):
            yield order[start : start + mini_batch_size]


class PolicyWorker(TrainableWorker):
    """One rank of the trainable policy."""

    lora: Optional["LoRAConfig"] = None

    def setup(self, model: ModelSpec, optim: "OptimConfig", scale: "ScaleConfig", total_steps: int,
              generation_batch_size: int = 0, forward_batch_size: int = 0,
              lora: Optional["LoRAConfig"] = None) -> None:
        """Build the policy (partitioned under ZeRO-3) and its DeepSpeed engine.

        Args:
            generation_batch_size: Prompts per `generate` call (0: the rank's whole shard); bounds
                the KV cache.
            forward_batch_size: Rows per no-grad forward when scoring (0: `optim.micro_batch_size`).
        """
        from chimed_ray.rollout.hf_engine import HFEngine

        self.load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        self.forward_batch_size = forward_batch_size or optim.micro_batch_size
        network = model.causal_lm(self.tokenizer)
        if lora is not None and lora.enabled:
            from chimed_ray.models.lora import apply_lora

            # Frozen base weights never reach the optimizer: `make_optimizer` takes trainable ones only.
            self.lora, network = lora, apply_lora(network, lora).train()
        # Old log-probs are taken in eval mode; the PPO forward must match them, or the ratio is not
        # 1 at the first minibatch (TRL's disable_dropout; OpenRLHF's LoRA dropout defaults to 0).
        disable_dropout(network)
        self.init_engine(network, optim, scale, total_steps)
        # The default rollout engine shares the training module: it always samples the latest weights.
        self.rollout = HFEngine(self.engine.module, eos_token_ids(self.tokenizer), self.tokenizer.pad_token_id,
                                generation_batch_size)

    @contextlib.contextmanager
    def _generation_weights(self):
        """Under ZeRO-3 each rank holds a slice of every weight. Generation gathers them once per
        rollout and lifts DeepSpeed's forward hooks (DeepSpeed's `unwrap_model_for_generation`),
        so no token step runs a collective: ranks whose answers end at different lengths (or
        after different numbers of generation batches) never wait on each other."""
        if self.engine.zero_optimization_stage() == 3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(self.engine):
                yield
        else:
            yield

    def full_state_dict(self) -> Optional[dict[str, "torch.Tensor"]]:
        """The full weights on rank 0 under the base model's names; a LoRA policy's adapters are
        merged in, so a separate engine (HF or vLLM) loads them like any checkpoint."""
        state = super().full_state_dict()
        if state is None or self.lora is None:
            return state
        from chimed_ray.models.lora import lora_scaling, merge_lora_state_dict

        return merge_lora_state_dict(state, lora_scaling(self.engine.module))

    def save_hf(self, directory: str) -> Optional[str]:
        """The policy as an HF directory; with LoRA the merged model (if `merge_on_save`) plus `adapter/`."""
        if self.lora is None:
            return super().save_hf(directory)
        from chimed_ray.models.lora import save_lora

        state = TrainableWorker.full_state_dict(self)  # peft names: save_lora splits adapter and base
        if self.rank != 0:
            return None
        return str(save_lora(self.engine.module, self.tokenizer, directory, state, merge=self.lora.merge_on_save))

    def generate(self, prompts: list[list[int]], params: "SamplingParams") -> list[list[int]]:
        """One answer per prompt, sampled with the current weights."""
        if params.seed is not None:
            params = type(params)(**{**params.__dict__, "seed": params.seed + self.rank})
        self.ensure_on_device("weights")
        with self._generation_weights():
            return self.rollout.generate(prompts, params)

    def logprobs(self, batch: "RolloutBatch", temperature: float = 1.0) -> "torch.Tensor":
        """Log-probs of the answer tokens under the current weights: `[b, R]`."""
        from chimed_ray.distributed.forward import no_grad_in_micro_batches, response_logprobs

        self.ensure_on_device("weights")
        self.engine.eval()
        try:
            return no_grad_in_micro_batches(
                lambda micro: response_logprobs(self.engine, micro.to(self.device), temperature)[0],
                batch, self.forward_batch_size,
            )
        finally:
            self.engine.train()

    def train_step(self, experience: "Experience", spec: PolicyLossSpec) -> dict[str, float]:
        """`ppo_epochs` passes over this rank's shard in minibatches; one optimizer step each."""
        self.ensure_on_device("all")
        records = []
        for rows in minibatch_order(experience.size, spec.mini_batch_size, spec.ppo_epochs, spec.seed):
            minibatch = experience.select(rows)
            for micro in minibatch.micro_batches(spec.micro_batch_size):
                records.append(self._micro_step(micro.to(self.device), spec))
        metrics = mean_metrics(records)
        metrics["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        metrics["lr"] = float(self.engine.get_lr()[0])
        return metrics

    def _micro_step(self, micro: "Experience", spec: PolicyLossSpec) -> dict[str, float]:
        from chimed_ray.algorithms import entropy_bonus, ppo_clip
        from chimed_ray.distributed.forward import response_logprobs

        # The entropy is always logged; it needs a graph only when it is part of the loss.
        logprobs, entropy = response_logprobs(self.engine, micro, spec.temperature, with_entropy=True,
                                              entropy_grad=spec.entropy_coef != 0)
        policy_loss, stats = ppo_clip(
            logprobs, micro.old_logprobs, micro.advantages, micro.response_mask,
            clip_eps_low=spec.clip_eps_low, clip_eps_high=spec.clip_eps_high, agg_mode=spec.agg_mode,
            dual_clip=spec.dual_clip or None,
        )
        entropy_term, mean_entropy = entropy_bonus(entropy, micro.response_mask, spec.entropy_coef, spec.agg_mode)
        loss = policy_loss + entropy_term
        if spec.kl_coef > 0:
            from chimed_ray.algorithms import kl_loss

            kl, stats["kl_loss"] = kl_loss(logprobs, micro.reference_logprobs, micro.response_mask, spec.agg_mode)
            loss = loss + spec.kl_coef * kl
        self._backward_step(loss)
        return {"policy_loss": float(policy_loss.detach()), "entropy": float(mean_entropy),
                **{key: float(value) for key, value in stats.items()}}

    def open_weight_sync(self, address: tuple[str, int], world_size: int, backend: str, lora_sync: str,
                         bucket_bytes: int) -> list:
        """Rank 0 joins the weight-sync group with the engines; every rank plans the same buckets."""
        from chimed_ray.distributed.weight_sync import SyncGroup, WeightSender
        from chimed_ray.models.lora import lora_scaling

        group = SyncGroup(address, 0, world_size, backend) if self.rank == 0 else None
        self.weight_sender = WeightSender(
            self.engine.module, self.engine.zero_optimization_stage() == 3, lora_sync if self.lora else None,
            lora_scaling(self.engine.module) if self.lora else 1.0, bucket_bytes, group, self.device)
        return self.weight_sender.buckets

    def send_weights(self) -> "SyncStats":
        """Broadcast the current weights bucket by bucket (distributed/weight_sync.py)."""
        return self.weight_sender.send()


def disable_dropout(module: "torch.nn.Module") -> None:
    """Set every dropout probability in `module` to 0 (LoRA's and attention's included), so
    train-mode and eval-mode forwards give the same log-probs."""
    import torch

    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0
        if isinstance(getattr(child, "attention_dropout", None), float):  # HF attention passes it as dropout_p
            child.attention_dropout = 0.0


def eos_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS (plus a chat model's end-of-turn token)."""
    ids = [tokenizer.eos_token_id]
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids
