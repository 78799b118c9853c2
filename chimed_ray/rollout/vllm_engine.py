"""vLLM behind the `GenerationEngine` interface, for GPU clusters (imported only when configured).

Weights arrive over the weight-sync process group (`distributed/weight_sync.py`): vLLM loads
`WeightSyncExtension` into each of its workers (`worker_extension_cls`), and the engine reaches
it through `LLM.collective_rpc` with method NAMES, never pickled functions (recent vLLM refuses
those). Each worker joins the group with the same `SyncGroup` code the HF engine runs over gloo
on CPU, receives each bucket from policy rank 0 over NCCL and hands its tensors to the model's
own `load_weights` (which maps and fuses HF names, e.g. q/k/v into qkv). This is the worker-
extension pattern of vLLM's `examples/offline_inference/rlhf_utils.py`; vLLM's newer native
weight-transfer engines (`WeightTransferConfig`) changed protocol between releases and need vLLM
in the trainer process, so we keep one transport for both engines.

Every request gets its own seed, so the samples of one prompt differ (GRPO/RLOO need that).
CPU test machines have no vLLM; the HF engine implements the same interface for the CPU tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from chimed_ray.rollout.base import Generation, SamplingParams, derive_seed, trim_at_eos

if TYPE_CHECKING:
    import torch

    from chimed_ray.distributed.weight_sync import Bucket, SyncStats

EXTENSION = "chimed_ray.rollout.vllm_engine.WeightSyncExtension"


class WeightSyncExtension:  # pragma: no cover - runs inside vLLM's GPU workers
    """Mixed into every vLLM worker: `self.model_runner`, `self.device` come from the worker."""

    def open_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, backend: str) -> None:
        from vllm.distributed.parallel_state import get_world_group

        from chimed_ray.distributed.weight_sync import SyncGroup

        rank = rank_offset + get_world_group().rank  # tensor-parallel workers each join, one rank each
        self.weight_sync_group = SyncGroup((host, port), rank, world_size, backend)

    def receive_weights(self, plain_buckets: list[dict]) -> tuple[int, int]:
        from chimed_ray.distributed.weight_sync import Bucket, receive_buckets

        def load(weights: list[tuple[str, "torch.Tensor"]]) -> None:
            self.model_runner.model.load_weights(weights=weights)

        stats = receive_buckets(self.weight_sync_group, [Bucket.from_plain(b) for b in plain_buckets], self.device, load)
        return stats.nbytes, stats.peak_extra_bytes

    def load_state(self, weights: list[tuple[str, "torch.Tensor"]]) -> None:
        self.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """A vLLM `LLM` owning one copy of the policy.

    Args:
        path: HF checkpoint directory to start from (the initial policy).
        eos_token_ids: Ids that end an answer.
        pad_token_id: Pad id (unused by vLLM; kept for the interface).
        precision: bf16, fp16 or fp32.
        gpu_memory_utilization: Share of the GPU vLLM may take (colocated roles need the rest).
        seed: Engine seed.
    """

    def __init__(self, path: str, eos_token_ids: Sequence[int], pad_token_id: int, precision: str = "bf16",
                 gpu_memory_utilization: float = 0.5, seed: int = 0, trust_remote_code: bool = False) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - needs a GPU machine
            raise ImportError("rollout.engine=vllm needs vllm: pip install 'chimed-ray[vllm]'") from exc
        dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}
        # processed_logprobs: the sampled token's log-prob after temperature, the distribution it
        # was drawn from (raw logprobs ignore temperature), for one-step off-policy ratios.
        self.llm = LLM(model=path, dtype=dtypes[precision], gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, trust_remote_code=trust_remote_code, enable_prefix_caching=True,
                       worker_extension_cls=EXTENSION, logprobs_mode="processed_logprobs",
                       enable_sleep_mode=True)  # colocated runs sleep it between rollouts (distributed/offload.py)
        self.eos_token_ids = set(eos_token_ids)

    def _sampling(self, params: SamplingParams, count: int, logprobs: bool) -> list:  # pragma: no cover
        from vllm import SamplingParams as VLLMSampling

        return [VLLMSampling(
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,
            stop_token_ids=sorted(self.eos_token_ids), logprobs=0 if logprobs else None,
            seed=None if params.seed is None else derive_seed(params.seed, index),
        ) for index in range(count)]

    def _run(self, prompts: list[list[int]], params: SamplingParams, logprobs: bool) -> list:  # pragma: no cover
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        outputs = self.llm.generate(requests, self._sampling(params, len(prompts), logprobs), use_tqdm=False)
        return [out.outputs[0] for out in outputs]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:  # pragma: no cover
        return [trim_at_eos(list(out.token_ids), self.eos_token_ids, None) for out in self._run(prompts, params, False)]

    def generate_with_logprobs(self, prompts: list[list[int]], params: SamplingParams) -> Generation:  # pragma: no cover
        answers, logprobs = [], []
        for out in self._run(prompts, params, True):
            ids = trim_at_eos(list(out.token_ids), self.eos_token_ids, None)
            answers.append(ids)
            logprobs.append([step[token].logprob for step, token in zip(out.logprobs, ids)])
        return Generation(answers, logprobs)

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> None:  # pragma: no cover
        self.llm.collective_rpc("load_state", args=(list(state_dict.items()),))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def open_weight_sync(self, address: tuple[str, int], rank: int, world_size: int, backend: str) -> None:  # pragma: no cover
        self.llm.collective_rpc("open_weight_sync", args=(address[0], address[1], rank, world_size, backend))

    def receive_weights(self, buckets: list["Bucket"]) -> "SyncStats":  # pragma: no cover
        from chimed_ray.distributed.weight_sync import SyncStats

        # Plain lists and dicts: vLLM's RPC serialiser refuses arbitrary classes by default.
        received = self.llm.collective_rpc("receive_weights", args=([bucket.to_plain() for bucket in buckets],))
        self.llm.reset_prefix_cache()
        return SyncStats(*received[0])

    def add_adapters(self, lora) -> None:  # pragma: no cover
        raise ValueError("rollout.lora_sync=adapter works with the hf engine; vLLM receives merged weights "
                         "(rollout.lora_sync=merged)")

    def state_dict(self) -> dict[str, "torch.Tensor"]:  # pragma: no cover
        raise NotImplementedError("weight digests of a vLLM engine are not exposed; check them on the HF engine")
