"""Footprints of one model in each kind of phase: training, a no-grad scoring forward, generation
with a KV cache, and idle (what stays resident). The stages in `stages.py` assemble these."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from chimed_ray.planning import memory
from chimed_ray.planning.memory import ModelStates, ZeroSetup
from chimed_ray.planning.plan import Footprint
from chimed_ray.planning.shapes import ModelShape


@dataclass(frozen=True)
class Runtime:
    """What every model of a run shares: the device, the compute dtype and the attention kernel."""

    device: str  # gpu or cpu
    precision: str  # fp32, bf16, fp16
    attention: memory.Attention = "sdpa"
    checkpointing: bool = False

    @property
    def dtype_bytes(self) -> int:
        return memory.DTYPE_BYTES[self.precision]

    @property
    def context_bytes(self) -> int:
        """Per process: the CUDA context and NCCL buffers (none on CPU, where RSS is the baseline)."""
        return memory.CUDA_CONTEXT_BYTES if self.device == "gpu" else 0


@dataclass(frozen=True)
class LoRAShape:
    rank: int
    targets: tuple[str, ...]
    dropout: float


@dataclass(frozen=True)
class Model:
    """One role's model on one device: its shape, whether it has an LM head (policy, reference)
    or a scalar head (reward, critic), and how it is held: trained under `zero`, or frozen as a
    replica (or ZeRO-3 inference shard over `frozen_shards` ranks)."""

    shape: ModelShape
    runtime: Runtime
    lm_head: bool
    zero: Optional[ZeroSetup] = None  # None: frozen
    lora: Optional[LoRAShape] = None
    frozen_shards: int = 1

    @property
    def params(self) -> int:
        return self.shape.causal_lm_params() if self.lm_head else self.shape.scalar_head_params()

    @property
    def trainable(self) -> int:
        if self.zero is None:
            return 0
        return self.shape.lora_params(self.lora.rank, list(self.lora.targets)) if self.lora else self.params

    def states(self) -> ModelStates:
        """Parameters, gradients and optimizer states on one device."""
        if self.zero is None:
            weights = memory.frozen_weights(self.params, self.runtime.dtype_bytes, self.frozen_shards,
                                            self.shape.largest_layer_params() if self.frozen_shards > 1 else 0)
            return ModelStates(weights, 0, 0, 0)
        frozen = self.params if self.lora else 0
        return memory.model_states(self.trainable, self.shape.largest_layer_params(), self.zero, frozen=frozen)

    def buffers(self, training: bool) -> int:
        """CUDA context, plus DeepSpeed's reduction buckets while training."""
        if not training or self.zero is None:
            return self.runtime.context_bytes
        overlap = self.runtime.device == "gpu"  # trainers/engine.py turns overlap_comm on with GPUs
        return self.runtime.context_bytes + memory.zero_buffers(self.trainable, self.zero, self.runtime.dtype_bytes, overlap)

    def resident(self, offloaded: bool = False, weights_only: bool = False) -> Footprint:
        """Idle on the device: everything, only the weights (optimizer and gradients moved off),
        or nothing but the process's context (everything offloaded)."""
        if offloaded:
            return Footprint(buffers=self.runtime.context_bytes)
        states = self.states()
        if weights_only:
            return Footprint(parameters=states.parameters, buffers=self.runtime.context_bytes)
        return Footprint(states.parameters, states.gradients, states.optimizer, buffers=self.runtime.context_bytes)

    def train(self, rows: int, tokens: int) -> Footprint:
        """A forward + backward + optimizer step on a micro-batch of `rows` x `tokens`."""
        shape, runtime = self.shape, self.runtime
        lora_extra = (memory.lora_activation_bytes(shape, self.lora.rank, list(self.lora.targets), self.lora.dropout,
                                                   runtime.dtype_bytes) if self.lora else 0)
        activations = memory.training_activations(shape, rows, tokens, runtime.dtype_bytes, runtime.attention, runtime.checkpointing,
                                                  lora_extra)
        logits = memory.training_logits(shape, rows, tokens, runtime.dtype_bytes) if self.lm_head else 0
        return replace(self.resident(), activations=activations, logits=logits, buffers=self.buffers(training=True))

    def score(self, rows: int, tokens: int, weights_only: bool = False) -> Footprint:
        """A no-grad forward (log-probs, values, rewards) on `rows` x `tokens`."""
        shape, runtime = self.shape, self.runtime
        activations = memory.inference_activations(shape, rows, tokens, runtime.dtype_bytes, runtime.attention)
        logits = memory.scoring_logits(shape, rows, tokens, runtime.dtype_bytes) if self.lm_head else 0
        # ZeRO-3 gathers one layer at a time here, inside the states' window.
        return replace(self.resident(weights_only=weights_only), activations=activations, logits=logits)

    def generate(self, rows: int, prompt_tokens: int, total_tokens: int, weights_only: bool = False) -> Footprint:
        """HF generate of `rows` sequences: prefill of the prompts, then decoding with the KV cache
        grown to `total_tokens`; under ZeRO-3 the weights are gathered whole for the rollout."""
        shape, runtime = self.shape, self.runtime
        prefill = memory.inference_activations(shape, rows, prompt_tokens, runtime.dtype_bytes, runtime.attention)
        return replace(self.resident(weights_only=weights_only), activations=prefill,
                       logits=memory.generation_logits(shape, rows, runtime.dtype_bytes),
                       kv_cache=memory.kv_cache_bytes(shape, rows, total_tokens, runtime.dtype_bytes),
                       gathered=self._gathered_for_generation())

    def _gathered_for_generation(self) -> int:
        """ZeRO-3 gathers the whole model once per rollout (the unwrap-for-generation pattern)
        while the shards stay; other setups already hold whole weights."""
        if self.zero is None or self.zero.stage != 3:
            return 0
        return self.runtime.dtype_bytes * self.params


def vllm_engine(shape: ModelShape, runtime: Runtime, utilization: float, budget_bytes: int) -> tuple[Footprint, list[str]]:
    """vLLM claims `gpu_memory_utilization` of the device up front for weights, activations and
    its KV-cache blocks. It refuses to start if the weights leave no room for cache blocks."""
    reserved = int(utilization * budget_bytes)
    weights = runtime.dtype_bytes * shape.causal_lm_params()
    notes = [f"vLLM reserves {utilization:g} x {budget_bytes / memory.GIB:g} GB; the weights take "
             f"{weights / memory.GIB:.1f} GB of it, the rest is KV-cache blocks"]
    return Footprint(reserved=reserved, buffers=runtime.context_bytes), notes


def vllm_weights_fit(shape: ModelShape, runtime: Runtime, utilization: float, budget_bytes: int, tokens: int) -> bool:
    """Whether vLLM's share holds the weights, one sequence's KV cache and ~10% for activations."""
    need = runtime.dtype_bytes * shape.causal_lm_params() + memory.kv_cache_bytes(shape, 1, tokens, runtime.dtype_bytes)
    return need * 1.1 <= utilization * budget_bytes
