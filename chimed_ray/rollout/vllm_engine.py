"""vLLM behind the `GenerationEngine` interface, for GPU clusters (imported only when configured).

Weights reach the engine through `LLM.collective_rpc`, which runs a function on every vLLM worker;
there each worker's model applies `load_weights` to the policy's HF-named tensors (vLLM maps and
fuses them, e.g. q/k/v into qkv). CPU test machines have no vLLM, so this path is exercised only
on GPU clusters; the HF engine implements the same interface and carries the CPU tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from chimed_ray.rollout.base import SamplingParams, trim_at_eos

if TYPE_CHECKING:
    import torch


def _load_weights_on_worker(worker, weights: list[tuple[str, "torch.Tensor"]]) -> None:
    """Runs inside each vLLM worker process (module-level, so it pickles)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """A vLLM `LLM` owning one copy of the policy.

    Args:
        path: HF checkpoint directory to start from (the initial policy).
        eos_token_ids: Ids that end an answer.
        pad_token_id: Pad id (unused by vLLM; kept for the interface).
        precision: bf16, fp16 or fp32.
        gpu_memory_utilization: Share of the GPU vLLM may take (colocated roles need the rest).
        seed: Sampling seed.
    """

    def __init__(self, path: str, eos_token_ids: Sequence[int], pad_token_id: int, precision: str = "bf16",
                 gpu_memory_utilization: float = 0.5, seed: int = 0, trust_remote_code: bool = False) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - needs a GPU machine
            raise ImportError("rollout.engine=vllm needs vllm: pip install 'chimed-ray[vllm]'") from exc
        dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}
        self.llm = LLM(model=path, dtype=dtypes[precision], gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, trust_remote_code=trust_remote_code, enable_prefix_caching=True)
        self.eos_token_ids = set(eos_token_ids)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:  # pragma: no cover
        from vllm import SamplingParams as VLLMSampling

        sampling = VLLMSampling(
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,
            stop_token_ids=sorted(self.eos_token_ids), seed=params.seed,
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], sampling, use_tqdm=False)
        return [trim_at_eos(list(out.outputs[0].token_ids), self.eos_token_ids, None) for out in outputs]

    def load_weights(self, state_dict: dict[str, "torch.Tensor"]) -> None:  # pragma: no cover
        self.llm.collective_rpc(_load_weights_on_worker, args=(list(state_dict.items()),))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
