"""Optional vLLM engine (GPU): continuous batching inside vLLM, so `@serve.batch` is bypassed.

vLLM is imported only when this engine is built; without it the replica fails with a message
that says how to install it or switch back to `engine.engine=hf`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from typing import Any

from chimed_ray.serving.sampling import RowState

logger = logging.getLogger("ray.serve")


def import_vllm() -> Any:
    """`vllm`, or a clear error naming the config field."""
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(
            "engine.engine=vllm but vLLM is not installed in the replica's environment "
            f"({exc}); `pip install vllm` on the GPU nodes or set engine.engine=hf"
        ) from None
    return vllm


class VLLMEngine:
    """One checkpoint served by `vllm.AsyncLLMEngine`; rows become independent vLLM requests."""

    is_async = True

    def __init__(self, path: str, precision: str, trust_remote_code: bool, max_context: int,
                 vllm_kwargs: dict[str, Any]):
        vllm = import_vllm()
        from vllm.engine.async_llm_engine import AsyncLLMEngine

        from chimed_ray.models import load_tokenizer

        self._vllm = vllm
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        dtype = {"auto": "bfloat16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision]
        kwargs = {"model": path, "dtype": dtype, "trust_remote_code": trust_remote_code, **vllm_kwargs}
        if max_context:
            kwargs.setdefault("max_model_len", max_context)
        self.engine = AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs))
        self.max_context = max_context or int(kwargs.get("max_model_len") or self._model_len())
        self._ids = itertools.count()
        logger.info("vLLM engine loaded %s (%s), context %d", path, dtype, self.max_context)

    def _model_len(self) -> int:
        try:
            return int(self.engine.model_config.max_model_len)
        except AttributeError:
            return 2048

    async def generate(self, rows: list[RowState]) -> None:
        """Run every row as its own vLLM request, concurrently; a row that raises fails alone.
        Cancelled, vLLM aborts the rows' requests (AsyncLLMEngine.generate does on CancelledError)."""
        await asyncio.gather(*(self._generate_row(row) for row in rows))

    def stats(self) -> dict[str, Any]:
        return {}

    async def _generate_row(self, row: RowState) -> None:
        params = self._vllm.SamplingParams(
            n=1,
            temperature=row.temperature,
            top_p=row.top_p,
            repetition_penalty=row.repetition_penalty,
            frequency_penalty=row.frequency_penalty,
            presence_penalty=row.presence_penalty,
            max_tokens=row.max_tokens,
            stop=row.stop or None,
            seed=row.seed,
            ignore_eos=row.ignore_eos,
        )
        request_id = f"{uuid.uuid4().hex[:12]}-{next(self._ids)}"
        prompt = {"prompt_token_ids": row.prompt_ids}
        try:
            async for output in self.engine.generate(prompt, params, request_id):
                if row.cancelled:
                    await self.engine.abort(request_id)
                    row.update_text(row.text, "abort")
                    return
                completion = output.outputs[0]
                row.token_ids = list(completion.token_ids)
                row.update_text(completion.text, completion.finish_reason if output.finished else None)
        except Exception as exc:  # one bad row must not fail the others gathered with it
            logger.exception("vLLM request %s failed", request_id)
            row.fail(repr(exc))
        finally:
            if not row.finished:
                row.update_text(row.text, "abort")

    def check_health(self) -> None:
        errored = getattr(self.engine, "errored", False)
        if errored:
            raise RuntimeError("vLLM engine is dead")
