"""The per-checkpoint Serve deployment: validates requests, hands rows to the engine, reports.

The ingress calls `generate` (one answer) or `generate_stream` (events) through a deployment
handle. Both return plain dicts tagged by `type` ("result", "start", "delta", "finish", "error"),
so a bad request or a failed generation becomes an error answer, never a dead replica.

Requests are tokenized on a worker thread (never on the event loop, where they would stall every
stream of the replica) and their rows go to the engine: the HF engine's continuous batcher, or
vLLM. With batching off, one request runs at a time, and the lock is held until its rows have left
the engine. A client that leaves, or a request past `engine.request_timeout_s`, has its rows
cancelled: they leave the batch at the next step, and telemetry records the tokens really made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from ray import serve

from chimed_ray.config.serve import BatchingConfig, EngineConfig
from chimed_ray.serving.jobs import Job, Limits, RequestError, prepare_job
from chimed_ray.serving.protocol import GenerationRequest
from chimed_ray.serving.telemetry import RequestTelemetry

logger = logging.getLogger("ray.serve")
_DONE = object()
GENERATION_FAILED = "Generation failed on the server; the error is in the replica's log."


def build_engine(path: str, engine: EngineConfig, batching: BatchingConfig) -> Any:
    """The generation engine named by `engine.engine`, imported only when chosen."""
    if engine.engine == "vllm":
        from chimed_ray.serving.vllm_engine import VLLMEngine

        return VLLMEngine(path, engine.precision, engine.trust_remote_code, engine.max_context, engine.vllm_kwargs)
    from chimed_ray.serving.hf_engine import HFEngine

    return HFEngine(path, engine.device, engine.precision, engine.trust_remote_code, engine.attn_implementation,
                    engine.max_context, batching.max_batch_size, batching.max_prefill_tokens,
                    engine.stall_timeout_s)


@serve.deployment(name="ModelServer")
class ModelServer:
    """One checkpoint on one replica."""

    def __init__(self, model_name: str, path: str, engine: EngineConfig, batching: BatchingConfig,
                 log_requests: bool = True):
        self.model_name = model_name
        self.engine = build_engine(path, engine, batching)
        self.limits = Limits(
            max_context=self.engine.max_context,
            default_max_tokens=engine.default_max_tokens,
            max_n=engine.max_n,
            max_sequences=batching.max_batch_size,
            chat_stop=list(engine.chat_stop),
            max_prompt_chars=engine.max_prompt_chars,
            repetition_penalty=engine.repetition_penalty,
        )
        self.request_timeout_s = engine.request_timeout_s
        self.batching = batching.enabled or engine.engine == "vllm"  # vLLM always batches inside
        self._one_at_a_time = asyncio.Lock()
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")  # HF tokenizers: one caller
        self.telemetry = RequestTelemetry(model_name, log_requests)

    async def _prepare(self, request: GenerationRequest) -> Job:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing, prepare_job, request, self.engine.tokenizer, self.limits)

    async def generate(self, request: GenerationRequest) -> dict[str, Any]:
        """Answer one request in full: `{"type": "result", "prompt_tokens", "choices"}` or an error."""
        try:
            job = await self._prepare(request)
        except RequestError as exc:
            return exc.to_event()
        try:
            await self._run(job)
        except asyncio.CancelledError:  # the client left; the engine has already dropped the rows
            self._record(job, stream=False, status="cancelled")
            raise
        except Exception:  # a failed generation must not take the replica down
            logger.exception("request %s failed", request.request_id)
            self._record(job, stream=False, status="error")
            return RequestError(GENERATION_FAILED, status=500, code="internal_error").to_event()
        failure = self._failure(job)
        self._record(job, stream=False, status="ok" if failure is None else failure.code)
        return failure.to_event() if failure else {"type": "result", **job.result()}

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[dict[str, Any]]:
        """Stream one request: "start" (or "error"), then "delta"/"finish" events per choice."""
        try:
            job = await self._prepare(request)
        except RequestError as exc:
            yield exc.to_event()
            return
        yield {"type": "start", "prompt_tokens": job.prompt_tokens}
        task, events = self._start_streaming(job)
        drained = False
        try:
            while (item := await events.get()) is not _DONE:
                index, delta, finish_reason, tokens = item
                if delta:
                    yield {"type": "delta", "index": index, "text": delta}
                if finish_reason == "error":
                    job.cancel()  # the request failed: its other choices stop too
                elif finish_reason is not None and finish_reason != "abort":
                    yield {"type": "finish", "index": index, "finish_reason": finish_reason,
                           "completion_tokens": tokens}
            drained = True
        finally:
            if not drained:  # the client went away: rows leave the batch at the next step
                job.cancel()
                task.add_done_callback(lambda _: self._record(job, stream=True, status="cancelled"))
        broke = task.cancelled() or task.exception() is not None
        failure = RequestError(GENERATION_FAILED, 500, code="internal_error") if broke else self._failure(job)
        self._record(job, stream=True, status="ok" if failure is None else failure.code)
        if failure is not None:
            yield failure.to_event()

    def _start_streaming(self, job: Job) -> tuple[asyncio.Future, asyncio.Queue]:
        """Run `job` in the background; its rows push (index, delta, finish, tokens) onto a queue,
        followed by `_DONE` once generation has ended."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(row, delta: str) -> None:  # runs on the generation thread
            event = (row.choice_index, delta, row.finish_reason, len(row.token_ids))
            loop.call_soon_threadsafe(events.put_nowait, event)

        def finished(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.error("stream of %s failed: %r", job.request.request_id, done.exception())
            events.put_nowait(_DONE)

        for row in job.rows:
            row.listener = listener
        task = asyncio.ensure_future(self._run(job))
        task.add_done_callback(finished)
        return task, events

    async def _run(self, job: Job) -> None:
        """Generate `job`'s rows; past the request timeout they are cancelled (`job.timed_out`)."""
        deadline = asyncio.get_running_loop().call_later(self.request_timeout_s, job.expire)
        try:
            if self.batching:
                await self.engine.generate(job.rows)
            else:
                async with self._one_at_a_time:
                    await self.engine.generate(job.rows)
        finally:
            deadline.cancel()

    def _failure(self, job: Job) -> RequestError | None:
        """What the client hears when the rows did not all finish well (None: they did)."""
        if job.timed_out:
            return RequestError(f"The request did not finish within {self.request_timeout_s:g} s and was "
                                "cancelled; retry later or ask for fewer tokens.", status=504, code="timeout")
        if job.failed:
            logger.error("request %s failed: %s", job.request.request_id,
                         "; ".join(row.error or "" for row in job.rows if row.error))
            return RequestError(GENERATION_FAILED, status=500, code="internal_error")
        return None

    def _record(self, job: Job, stream: bool, status: str = "ok") -> None:
        self.telemetry.record(
            job.request.request_id, job.request.kind, job.prompt_tokens, job.completion_tokens,
            time.perf_counter() - job.started, stream, status,
        )

    async def info(self) -> dict[str, Any]:
        """What the ingress reports on /health."""
        stats = self.engine.stats()
        return {
            "model": self.model_name,
            "status": "ok",
            "max_context": self.limits.max_context,
            "engine": type(self.engine).__name__,
            "device": getattr(self.engine, "device", "cuda"),
            "batching": self.batching,
            **stats,
            "pid": os.getpid(),
        }

    async def recent_requests(self) -> list[dict[str, Any]]:
        """The last requests this replica finished (for operators and tests; not on HTTP)."""
        return list(self.telemetry.recent)

    def check_health(self) -> None:
        """Serve's periodic health check; raising makes Serve replace the replica."""
        self.engine.check_health()
