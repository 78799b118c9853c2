"""The critic role: per-token values V(s_t) from a scalar head, trained with the clipped value loss
under DeepSpeed. Created only when the advantage estimator needs it (GAE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chimed_ray.distributed.policy import minibatch_order
from chimed_ray.distributed.worker import ModelSpec, TrainableWorker, mean_metrics

if TYPE_CHECKING:
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.distributed.batch import Experience, RolloutBatch


@dataclass
class ValueLossSpec:
    """The critic update: value clip range, epochs and minibatch size per rank."""

    value_clip: float = 0.2  # 0 disables clipping
    agg_mode: str = "token_mean"
    ppo_epochs: int = 1
    mini_batch_size: int = 8
    micro_batch_size: int = 4
    seed: int = 0


class CriticWorker(TrainableWorker):
    """One rank of the trainable critic."""

    def setup(self, model: ModelSpec, optim: "OptimConfig", scale: "ScaleConfig", total_steps: int,
              forward_batch_size: int = 0) -> None:
        """Build the critic (partitioned under ZeRO-3); `forward_batch_size` rows per no-grad
        forward when scoring (0: `optim.micro_batch_size`)."""
        self.load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        self.forward_batch_size = forward_batch_size or optim.micro_batch_size
        self.init_engine(model.scalar_model(self.tokenizer), optim, scale, total_steps)

    def values(self, batch: "RolloutBatch") -> "torch.Tensor":
        """V(s_t) before each answer token: `[b, R]`."""
        from chimed_ray.distributed.forward import no_grad_in_micro_batches, response_values

        self.ensure_on_device("weights")
        self.engine.eval()
        try:
            return no_grad_in_micro_batches(
                lambda micro: response_values(self.engine, micro.to(self.device)), batch, self.forward_batch_size
            )
        finally:
            self.engine.train()

    def train_step(self, experience: "Experience", spec: ValueLossSpec) -> dict[str, float]:
        """Regress values on the returns, `ppo_epochs` passes in minibatches."""
        from chimed_ray.algorithms import masked_mean, value_loss
        from chimed_ray.distributed.forward import response_values

        self.ensure_on_device("all")
        records = []
        for rows in minibatch_order(experience.size, spec.mini_batch_size, spec.ppo_epochs, spec.seed):
            for micro in experience.select(rows).micro_batches(spec.micro_batch_size):
                micro = micro.to(self.device)
                values = response_values(self.engine, micro)  # [b, R]
                loss, clip_fraction = value_loss(values, micro.old_values, micro.returns, micro.response_mask,
                                                 spec.value_clip or None, spec.agg_mode)
                self._backward_step(loss)
                records.append({
                    "value_loss": float(loss.detach()), "value_clip_fraction": float(clip_fraction),
                    "values": float(masked_mean(values.detach(), micro.response_mask)),
                })
        metrics = mean_metrics(records)
        metrics["critic_grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        return metrics
