"""The per-checkpoint Serve deployment: validates requests, batches them, generates, reports.

The ingress calls `generate` (one answer) or `generate_stream` (events) through a deployment
handle. Both return plain dicts tagged by `type` ("result", "start", "delta", "finish", "error"),
so a bad request or a failed generation becomes an error answer, never a dead replica.

With batching on, concurrent jobs meet in `_batched` (`@serve.batch`, sized in sequences: n x
prompts); batches that Serve forms while the engine is busy are merged by a `BatchCoalescer`, and
each merged batch is one left-padded `generate` call. With batching off, jobs run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, AsyncIterator

from ray import serve

from chimed_ray.config.serve import BatchingConfig, EngineConfig
from chimed_ray.serving.coalesce import BatchCoalescer
from chimed_ray.serving.jobs import Job, Limits, RequestError, prepare_job
from chimed_ray.serving.protocol import GenerationRequest
from chimed_ray.serving.telemetry import RequestTelemetry

logger = logging.getLogger("ray.serve")
_DONE = object()


def build_engine(path: str, engine: EngineConfig) -> Any:
    """The generation engine named by `engine.engine`, imported only when chosen."""
    if engine.engine == "vllm":
        from chimed_ray.serving.vllm_engine import VLLMEngine

        return VLLMEngine(path, engine.precision, engine.trust_remote_code, engine.max_context, engine.vllm_kwargs)
    from chimed_ray.serving.hf_engine import HFEngine

    return HFEngine(path, engine.device, engine.precision, engine.trust_remote_code,
                    engine.attn_implementation, engine.max_context)


def count_sequences(jobs: list[Job]) -> int:
    """Batch size as `@serve.batch` should see it: sequences, not requests."""
    return sum(len(job.rows) for job in jobs)


@serve.deployment(name="ModelServer")
class ModelServer:
    """One checkpoint on one replica."""

    def __init__(self, model_name: str, path: str, engine: EngineConfig, batching: BatchingConfig,
                 log_requests: bool = True):
        self.model_name = model_name
        self.engine = build_engine(path, engine)
        self.limits = Limits(
            max_context=self.engine.max_context,
            default_max_tokens=engine.default_max_tokens,
            max_n=engine.max_n,
            max_sequences=batching.max_batch_size,
            chat_stop=list(engine.chat_stop),
        )
        self.batching = batching.enabled and not self.engine.is_async
        self._one_at_a_time = asyncio.Lock()
        self._coalescer = BatchCoalescer(self._generate_rows, batching.max_batch_size)
        self._batched.set_max_batch_size(batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.telemetry = RequestTelemetry(model_name, log_requests)
        self.batches_run = 0
        self.largest_batch = 0  # sequences in the biggest forward batch so far (tests, /health)

    async def generate(self, request: GenerationRequest) -> dict[str, Any]:
        """Answer one request in full: `{"type": "result", "prompt_tokens", "choices"}` or an error."""
        try:
            job = prepare_job(request, self.engine.tokenizer, self.limits)
        except RequestError as exc:
            return exc.to_event()
        try:
            await self._run(job)
        except Exception as exc:  # a failed batch must not take the replica down
            logger.exception("request %s failed", request.request_id)
            self._record(job, stream=False, status="error")
            return RequestError(f"generation failed: {exc}", status=500, code="internal_error").to_event()
        self._record(job, stream=False)
        return {"type": "result", **job.result()}

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[dict[str, Any]]:
        """Stream one request: "start" (or "error"), then "delta"/"finish" events per choice."""
        try:
            job = prepare_job(request, self.engine.tokenizer, self.limits)
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
                if finish_reason is not None:
                    yield {"type": "finish", "index": index, "finish_reason": finish_reason,
                           "completion_tokens": tokens}
            drained = True
        finally:
            if not drained:  # the client went away: the running batch drops these rows next step
                for row in job.rows:
                    row.cancelled = True
                self._record(job, stream=True, status="cancelled")
        if task.cancelled() or task.exception() is not None:
            reason = "cancelled" if task.cancelled() else repr(task.exception())
            logger.error("request %s failed: %s", request.request_id, reason)
            self._record(job, stream=True, status="error")
            yield RequestError(f"generation failed: {reason}", status=500, code="internal_error").to_event()
            return
        self._record(job, stream=True)

    def _start_streaming(self, job: Job) -> tuple[asyncio.Future, asyncio.Queue]:
        """Run `job` in the background; its rows push (index, delta, finish, tokens) onto a queue,
        followed by `_DONE` once generation has ended."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(row, delta: str) -> None:  # runs on the generation thread
            event = (row.choice_index, delta, row.finish_reason, len(row.token_ids))
            loop.call_soon_threadsafe(events.put_nowait, event)

        def finished(done: asyncio.Future) -> None:
            if not done.cancelled():
                done.exception()  # retrieved so an abandoned stream logs no "never retrieved"
            events.put_nowait(_DONE)

        for row in job.rows:
            row.listener = listener
        task = asyncio.ensure_future(self._run(job))
        task.add_done_callback(finished)
        return task, events

    async def _run(self, job: Job) -> None:
        if self.engine.is_async:
            await self.engine.generate(job.rows)
        elif self.batching:
            await self._batched(job)
        else:
            async with self._one_at_a_time:
                await self._generate_rows(job.rows)

    # Serve may hand over many batches at once; the coalescer runs them one forward pass at a time.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=1024,
                 batch_size_fn=count_sequences)
    async def _batched(self, jobs: list[Job]) -> list[None]:
        await self._coalescer.submit([row for job in jobs for row in job.rows])
        return [None] * len(jobs)

    async def _generate_rows(self, rows: list) -> None:
        """One forward batch, off the event loop so requests keep arriving meanwhile."""
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        self.telemetry.forward_batch(len(rows))
        await asyncio.to_thread(self.engine.generate, rows)

    def _record(self, job: Job, stream: bool, status: str = "ok") -> None:
        self.telemetry.record(
            job.request.request_id, job.request.kind, job.prompt_tokens, job.completion_tokens,
            time.perf_counter() - job.started, stream, status,
        )

    async def info(self) -> dict[str, Any]:
        """What the ingress reports on /health."""
        return {
            "model": self.model_name,
            "status": "ok",
            "max_context": self.limits.max_context,
            "engine": type(self.engine).__name__,
            "device": getattr(self.engine, "device", "cuda"),
            "batching": self.batching,
            "batches_run": self.batches_run,
            "largest_batch": self.largest_batch,
            "pid": os.getpid(),
        }

    def check_health(self) -> None:
        """Serve's periodic health check; raising makes Serve replace the replica."""
        self.engine.check_health()
