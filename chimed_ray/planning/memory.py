"""The memory formulas of the plan: bytes of model states, activations, logits and KV cache for one
model on one device. Pure arithmetic over shapes; no torch, no Ray.

- Model states (parameters, gradients, AdamW states) follow DeepSpeed's own estimators
  (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`), split into
  their terms: with bf16/fp16 mixed precision 2 bytes of 16-bit weights plus 18 bytes per parameter
  of 16-bit and fp32 gradients (2 + 4), fp32 master weights (4) and Adam moments (8), partitioned
  over the data-parallel ranks as the ZeRO stage says; ZeRO-3 adds a window of 4 bytes x the largest
  layer for gathering. Pure fp32 training has no master copy: 4 + 4 + 8 bytes.
- Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", sec. 4.1) counted tensor by tensor for HF's LLaMA layer: RMSNorm keeps an
  fp32 copy of its input, RoPE keeps q, k and their rotations, SwiGLU keeps gate, SiLU, up and their
  product, and sdpa/flash attention keeps q, k, v and the output but never the s x s scores (eager
  attention does). GQA keys and values are num_kv_heads wide unless sdpa repeats them (it does when
  a padding mask is present). There is no dropout.
- Logits: the [B, T, V] output in the model dtype, its fp32 log-softmax and, in backward, the
  fp32 gradients of both (Korthikanti's formula leaves the output layer out; at 40k-150k
  vocabularies it is often the largest single term).
- KV cache: 2 x layers x kv_heads x head_dim x bytes per token of prompt + answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chimed_ray.planning.shapes import ModelShape

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEEPSPEED_BUFFER_FACTOR = 1.5  # DeepSpeed estimators' additional_buffer_factor (host RAM)
REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default zero_optimization.reduce_bucket_size
CUDA_CONTEXT_BYTES = GIB  # CUDA context, cuBLAS workspace and NCCL buffers of one GPU process
Attention = Literal["eager", "sdpa", "flash_attention_2"]


@dataclass(frozen=True)
class ZeroSetup:
    """How DeepSpeed holds a trainable model: ZeRO stage over `num_ranks` data-parallel ranks,
    CPU offload, and mixed precision (16-bit weights with fp32 masters) or pure fp32."""

    stage: int
    num_ranks: int
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: bool = True
    gpus_per_node: int = 8  # only DeepSpeed's host-RAM figure depends on it

    @property
    def num_nodes(self) -> int:
        return max(1, -(-self.num_ranks // self.gpus_per_node))

    @property
    def ranks_per_node(self) -> int:
        return min(self.num_ranks, self.gpus_per_node)


@dataclass(frozen=True)
class ModelStates:
    """Bytes per device of one trainable model's states, and DeepSpeed's host-RAM figure per node."""

    parameters: int
    gradients: int
    optimizer: int
    host: int

    @property
    def device(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def model_states(trainable: int, largest_layer: int, zero: ZeroSetup, frozen: int = 0) -> ModelStates:
    """Parameters, gradients and optimizer states per device for `trainable` parameters (plus
    `frozen` ones held in the 16-bit dtype, e.g. a LoRA base model), as DeepSpeed lays them out.

    With `frozen=0` and mixed precision, `device` equals the GPU figure of
    `estimate_zero2_model_states_mem_needs` (stages 0-2; stage 0 is stage 2 on one rank) or of
    `estimate_zero3_model_states_mem_needs` (stage 3, `zero_init=True`), to the byte, and `host`
    their CPU figure per node.
    """
    n, p = zero.num_ranks, trainable
    weight = 2 if zero.mixed_precision else 4  # bytes of the weights the forward runs on
    master = 4 if zero.mixed_precision else 0  # fp32 master weights
    adam = 8  # fp32 exp_avg and exp_avg_sq
    if zero.stage == 3:
        # Everything is partitioned: 16-bit weights, fp32 gradients, masters and moments (DeepSpeed's
        # 18 bytes), plus a window for gathering the largest layer.
        window, frozen_part = 4 * largest_layer, weight * frozen // n
        host = _host_zero3(p, largest_layer, zero)
        if zero.offload_optimizer:
            shard = 0 if zero.offload_params else int(weight * p / n)
            return ModelStates(window + shard + frozen_part, 0, 0, host)
        total = int((weight + 4 + master + adam) * p / n)
        shard, gradients = int(weight * p / n), int(4 * p / n)
        return ModelStates(window + shard + frozen_part, gradients, total - shard - gradients, host)
    replicated = weight * (p + frozen)
    host = _host_zero2(p, zero)
    if zero.offload_optimizer:
        return ModelStates(replicated, 0, 0, host)
    shards = 1 if zero.stage == 0 else n
    fp32_grads = 4 if zero.mixed_precision else 0
    if zero.stage == 1:  # 16-bit gradients stay whole; only fp32 gradients and optimizer are sharded
        gradients = weight * p + int(fp32_grads * p / shards)
        return ModelStates(replicated, gradients, int((master + adam) * p / shards), host)
    grad_bytes = weight + fp32_grads if zero.mixed_precision else 4  # 16-bit + fp32 gradients, or fp32
    total = int((grad_bytes + master + adam) * p / shards)  # DeepSpeed's int(18 * P / N)
    gradients = int(grad_bytes * p / shards)
    return ModelStates(replicated, gradients, total - gradients, host)


def _host_zero2(p: int, zero: ZeroSetup) -> int:
    """DeepSpeed's ZeRO-2 CPU figure: the offloaded states, or each rank's fp32 copy at load."""
    if zero.offload_optimizer:
        return int(p * max(4 * zero.num_ranks, 16) * DEEPSPEED_BUFFER_FACTOR)
    return int(p * 4 * zero.ranks_per_node * DEEPSPEED_BUFFER_FACTOR)


def _host_zero3(p: int, largest_layer: int, zero: ZeroSetup) -> int:
    """DeepSpeed's ZeRO-3 CPU figure with zero_init (models built already partitioned)."""
    per_node = 1 / zero.num_nodes
    if zero.offload_optimizer:
        return int(p * (18 if zero.offload_params else 16) * per_node * DEEPSPEED_BUFFER_FACTOR)
    return int(largest_layer * 4 * zero.ranks_per_node * DEEPSPEED_BUFFER_FACTOR)


def frozen_weights(params: int, dtype_bytes: int, sharded_over: int = 1, largest_layer: int = 0) -> int:
    """Bytes of a model that is only run forward: a replica, or a ZeRO-3 inference shard plus the
    gathering window of its largest layer."""
    if sharded_over > 1:
        return dtype_bytes * params // sharded_over + 4 * largest_layer
    return dtype_bytes * params


def zero_buffers(trainable: int, zero: ZeroSetup, dtype_bytes: int, overlap_comm: bool) -> int:
    """DeepSpeed's gradient-reduction buckets with contiguous_gradients: one (ZeRO-3) or, with
    overlap_comm, two (ZeRO-1/2) buffers of reduce_bucket_size elements."""
    if zero.stage == 0:
        return 0
    elements = min(REDUCE_BUCKET_ELEMENTS, trainable)
    copies = 2 if overlap_comm and zero.stage in (1, 2) else 1
    # ZeRO-1 reduces into an fp32 accumulator; ZeRO-2/3 stage gradients in the model dtype.
    return copies * elements * (4 if zero.stage == 1 else dtype_bytes)


def _norm_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """One RMSNorm per token: the fp32 copy of its input (the input itself in fp32), the normalised
    value before the weight, and its output (the next projection's input)."""
    return 4 * shape.hidden_size + 2 * dtype_bytes * shape.hidden_size


def _attention_bytes(shape: ModelShape, dtype_bytes: int, repeat_kv: bool) -> int:
    """Attention block per token, scores not counted: q, k and their RoPE rotations and rotated
    copies, v, the attention output and its contiguous copy for o_proj; GQA keys/values are
    repeated to all heads when `repeat_kv`."""
    q, kv = shape.q_size, shape.kv_size
    if repeat_kv and shape.num_kv_heads != shape.num_heads:
        elements = 2 * q + 2 * kv + 2 * q + 2 * q + q  # q, rot q; k, rot k; repeated k, v; out x 2; q_embed
    else:
        elements = 3 * q + 3 * kv + kv + 2 * q  # q, rot q, q_embed; k, rot k, k_embed; v; out x 2
    return dtype_bytes * elements + 4 * shape.num_heads  # + fp32 log-sum-exp per head


def layer_activation_bytes(shape: ModelShape, dtype_bytes: int, repeat_kv: bool) -> int:
    """Bytes one decoder layer keeps for backward, per token (scores excluded): two RMSNorms,
    attention and the SwiGLU MLP (gate, SiLU(gate), up, their product)."""
    mlp = 4 * shape.intermediate_size * dtype_bytes
    return 2 * _norm_bytes(shape, dtype_bytes) + _attention_bytes(shape, dtype_bytes, repeat_kv) + mlp


def attention_scores_bytes(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int, attention: Attention) -> int:
    """Per-layer bytes of the s x s attention probabilities: only eager attention keeps them (the
    fp32 softmax and its cast); sdpa and flash attention recompute them in backward."""
    if attention != "eager":
        return 0
    return rows * shape.num_heads * tokens * tokens * (4 + dtype_bytes)


def mask_bytes(rows: int, tokens: int, attention: Attention) -> int:
    """The [B, 1, T, T] boolean mask HF builds for sdpa/eager with padding (one for all layers)."""
    return 0 if attention == "flash_attention_2" else rows * tokens * tokens


def training_activations(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int, attention: Attention,
                         checkpointing: bool, lora_extra_per_token: int = 0) -> int:
    """Activations kept for backward at a micro-batch of `rows` x `tokens`, logits excluded.

    With gradient checkpointing (HF checkpoints each decoder layer) only every layer's input
    stays, and one layer is recomputed at a time during backward.
    """
    repeat_kv = attention != "flash_attention_2"  # sdpa repeats GQA heads when a mask is present
    per_layer = (layer_activation_bytes(shape, dtype_bytes, repeat_kv) + lora_extra_per_token) * rows * tokens
    per_layer += attention_scores_bytes(shape, rows, tokens, dtype_bytes, attention)
    final_norm = _norm_bytes(shape, dtype_bytes) * rows * tokens
    if checkpointing:
        layer_inputs = shape.num_layers * dtype_bytes * shape.hidden_size * rows * tokens
        body = layer_inputs + per_layer
    else:
        body = shape.num_layers * per_layer
    return body + final_norm + mask_bytes(rows, tokens, attention)


def inference_activations(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int, attention: Attention) -> int:
    """Peak transient of a no-grad forward: the live tensors of one layer (residual, fp32 norm copy,
    q/k/v, attention output, gate/up/SiLU) plus the mask; nothing is kept across layers."""
    h, i = shape.hidden_size, shape.intermediate_size
    per_token = 4 * h + dtype_bytes * (3 * h + 2 * shape.kv_size + 3 * i)
    scores = attention_scores_bytes(shape, rows, tokens, dtype_bytes, attention)
    return per_token * rows * tokens + scores + mask_bytes(rows, tokens, attention)


def training_logits(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """The LM head's [B, T, V] logits (model dtype), the fp32 log-softmax kept for backward, and in
    backward the fp32 gradients of the log-softmax's output and input: (bytes + 12) x B x T x V."""
    return (dtype_bytes + 12) * rows * tokens * shape.vocab_size


def scoring_logits(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """No-grad log-probs: the [B, T, V] logits and the shifted/temperature-scaled copy (the fp32
    log-softmax runs in small chunks)."""
    return 2 * dtype_bytes * rows * tokens * shape.vocab_size


def generation_logits(shape: ModelShape, rows: int, dtype_bytes: int) -> int:
    """Each decoding step: last-position logits, their fp32 copy and the sampling probabilities."""
    return (dtype_bytes + 8) * rows * shape.vocab_size


def kv_cache_bytes(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `rows` sequences of `tokens` (prompt + answer)."""
    return 2 * shape.num_layers * shape.kv_size * dtype_bytes * rows * tokens


def lora_activation_bytes(shape: ModelShape, rank: int, targets: list[str], dropout: float, dtype_bytes: int) -> int:
    """Extra bytes per token and layer a LoRA adapter keeps: the rank-r hidden of each targeted
    projection, and with dropout the dropped input and its mask."""
    shapes = shape.layer_linear_shapes()
    total = 0
    for name in targets:
        if name in shapes:
            fan_in = shapes[name][0]
            total += rank * dtype_bytes + ((dtype_bytes + 1) * fan_in if dropout > 0 else 0)
    return total
