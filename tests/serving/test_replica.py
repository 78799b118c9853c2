"""The model replica (`ModelServer`) and the request rules, without Ray Serve: what a replica refuses,
how it stops work nobody waits for, and what it tells clients when something breaks."""

from __future__ import annotations

import asyncio
import threading

import pydantic
import pytest

from chimed_ray.config.serve import BatchingConfig, DeploymentConfig, EngineConfig
from chimed_ray.serving.jobs import Limits, RequestError, prepare_job
from chimed_ray.serving.protocol import MAX_SEED, ChatCompletionRequest, CompletionRequest, GenerationRequest

CHAT = [{"role": "user", "content": "头痛怎么办"}]


def server(checkpoint, **engine):
    from chimed_ray.serving.model_server import ModelServer

    batching = engine.pop("batching", True)
    return ModelServer.func_or_class("tiny", str(checkpoint), EngineConfig(**engine), BatchingConfig(enabled=batching))


def request(**kwargs) -> GenerationRequest:
    base = dict(request_id="r", kind="completion", prompts=["咳嗽"], max_tokens=400, temperature=0.8,
                ignore_eos=True)
    return GenerationRequest(**{**base, **kwargs})


async def started(replica) -> None:
    while replica.engine.batcher.live_rows == 0:
        await asyncio.sleep(0.005)
    while replica.engine.batcher.stats.steps < 2:
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def replica(tiny_checkpoint, one_torch_thread):
    replica = server(tiny_checkpoint, request_timeout_s=600)
    yield replica
    replica.engine.batcher.close()


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", 1e-40),  # (0, 1e-38] gave NaN probabilities
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("seed", 2**64),
        ("seed", -1),
        ("frequency_penalty", float("inf")),
        ("presence_penalty", float("nan")),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("nan")),
        ("top_p", float("nan")),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", "x" * 129),
    ],
)
def test_the_protocol_refuses_values_that_break_sampling(field, value):
    with pytest.raises(pydantic.ValidationError) as caught:
        CompletionRequest(model="m", prompt="x", **{field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def test_the_protocol_keeps_what_openai_allows():
    body = ChatCompletionRequest(model="m", messages=CHAT, temperature=0.0, seed=MAX_SEED, stop=["a", "b", "c", "d"],
                                 frequency_penalty=-2.0, presence_penalty=2.0)
    assert body.stop_list() == ["a", "b", "c", "d"] and body.seed == MAX_SEED
    assert CompletionRequest(model="m", prompt="x", temperature=0.01).temperature == 0.01


def limits(**kwargs) -> Limits:
    return Limits(**{**dict(max_context=64, default_max_tokens=16, max_n=4, max_sequences=8,
                            repetition_penalty=1.1), **kwargs})


class NoTokenizer:
    def __call__(self, *args, **kwargs):
        raise AssertionError("the tokenizer must not see an oversized prompt")

    apply_chat_template = __call__


def test_prompt_characters_are_capped_before_tokenizing():
    with pytest.raises(RequestError) as caught:
        prepare_job(request(prompts=["病" * 1025], max_tokens=None), NoTokenizer(), limits())  # 16 x 64 = 1024
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "prompt"
    chat = request(kind="chat", prompts=[[{"role": "user", "content": "病" * 600}] * 2], max_tokens=None)
    with pytest.raises(RequestError, match="1200 characters"):
        prepare_job(chat, NoTokenizer(), limits())


def test_seed_plus_index_must_fit_the_rng(tokenizer):
    with pytest.raises(RequestError) as caught:
        prepare_job(request(seed=MAX_SEED, n=2, max_tokens=4), tokenizer, limits())
    assert caught.value.param == "seed"
    assert [row.seed for row in prepare_job(request(seed=MAX_SEED - 1, n=2, max_tokens=4), tokenizer,
                                            limits()).rows] == [MAX_SEED - 1, MAX_SEED]


def test_penalties_default_and_openai_mapping(tokenizer):
    def row(**kwargs):
        return prepare_job(request(max_tokens=4, **kwargs), tokenizer, limits()).rows[0]

    assert row().repetition_penalty == 1.1  # the serving default
    own = row(frequency_penalty=0.5, presence_penalty=0.2)  # OpenAI's penalties replace the default
    assert (own.repetition_penalty, own.frequency_penalty, own.presence_penalty) == (1.0, 0.5, 0.2)
    assert row(repetition_penalty=1.3, frequency_penalty=0.5).repetition_penalty == 1.3


def test_queues_are_bounded_by_default():
    assert 0 < DeploymentConfig().max_queued_requests < 10_000
    assert DeploymentConfig().to_serve()["max_queued_requests"] == DeploymentConfig().max_queued_requests


def test_tokenizing_runs_off_the_event_loop(replica, monkeypatch):
    import chimed_ray.serving.model_server as model_server

    threads = []
    real = model_server.prepare_job

    def spy(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(model_server, "prepare_job", spy)
    result = asyncio.run(replica.generate(request(max_tokens=2)))
    assert result["type"] == "result" and threads and threads[0].startswith("tokenize")


def test_a_client_that_leaves_a_non_streaming_request_stops_its_rows(replica):
    async def scenario():
        task = asyncio.ensure_future(replica.generate(request(request_id="gone")))
        await started(replica)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return replica.engine.batcher.live_rows

    assert asyncio.run(scenario()) == 0
    record = [r for r in asyncio.run(replica.recent_requests()) if r["request_id"] == "gone"][-1]
    assert record["status"] == "cancelled" and record["completion_tokens"] < 400


def test_a_stream_that_loses_its_client_records_the_tokens_really_made(replica):
    async def scenario():
        stream = replica.generate_stream(request(request_id="left"))
        assert (await stream.__anext__())["type"] == "start"
        assert (await stream.__anext__())["type"] == "delta"
        await stream.aclose()  # what Serve does when the ingress cancels the stream
        while not any(r["request_id"] == "left" for r in replica.telemetry.recent):
            await asyncio.sleep(0.01)  # recorded once the rows have left the engine

    asyncio.run(scenario())
    record = [r for r in replica.telemetry.recent if r["request_id"] == "left"][-1]
    assert record["status"] == "cancelled" and record["completion_tokens"] < 400


def test_unbatched_requests_keep_the_lock_until_their_rows_leave(tiny_checkpoint, one_torch_thread):
    replica = server(tiny_checkpoint, batching=False)

    async def scenario():
        first = asyncio.ensure_future(replica.generate(request(request_id="first")))
        await started(replica)
        second = asyncio.ensure_future(replica.generate(request(request_id="second", max_tokens=3)))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        live_when_released = replica.engine.batcher.live_rows
        return live_when_released, await second

    try:
        live_when_released, second = asyncio.run(scenario())
    finally:
        replica.engine.batcher.close()
    assert live_when_released == 0  # the cancelled rows were gone before the next request got the lock
    assert second["type"] == "result" and second["choices"][0]["completion_tokens"] == 3


def test_a_request_past_its_timeout_is_cancelled_with_504(tiny_checkpoint, one_torch_thread):
    replica = server(tiny_checkpoint, request_timeout_s=0.5)

    async def scenario():
        answer = await replica.generate(request(request_id="slow", max_tokens=500))
        stream = [event async for event in replica.generate_stream(request(request_id="slow-stream", max_tokens=500))]
        return answer, stream

    try:
        answer, stream = asyncio.run(scenario())
    finally:
        replica.engine.batcher.close()
    assert answer["type"] == "error" and answer["status"] == 504 and answer["code"] == "timeout"
    assert stream[-1]["type"] == "error" and stream[-1]["status"] == 504
    assert not any(event["type"] == "finish" for event in stream)
    records = {r["request_id"]: r for r in replica.telemetry.recent}
    assert records["slow"]["status"] == "timeout" and records["slow"]["completion_tokens"] < 500


def test_a_failed_generation_never_shows_the_exception_to_the_client(replica, monkeypatch):
    async def broken(rows):
        raise RuntimeError("CUDA error at /secret/path/model.py:42")

    monkeypatch.setattr(replica.engine, "generate", broken)
    answer = asyncio.run(replica.generate(request(max_tokens=2)))
    assert answer["status"] == 500 and answer["code"] == "internal_error"
    assert "secret" not in answer["message"] and "CUDA" not in answer["message"]


def test_a_row_that_fails_fails_its_request_only(replica, monkeypatch):
    """A request whose row cannot be sampled gets a 500; a good request in the same steps succeeds."""
    import chimed_ray.serving.model_server as model_server

    real = model_server.prepare_job

    def poisoned(req, tokenizer, limits):
        job = real(req, tokenizer, limits)
        if req.request_id == "bad":
            job.rows[0].temperature = 1e-45  # what the protocol now refuses, forced in
        return job

    monkeypatch.setattr(model_server, "prepare_job", poisoned)

    async def scenario():
        return await asyncio.gather(
            replica.generate(request(request_id="good-1", max_tokens=12)),
            replica.generate(request(request_id="bad", max_tokens=12)),
            replica.generate(request(request_id="good-2", max_tokens=12, temperature=0.0)),
        )

    good_1, bad, good_2 = asyncio.run(scenario())
    assert bad["type"] == "error" and bad["status"] == 500 and "non-finite" not in bad["message"]
    assert good_1["type"] == good_2["type"] == "result"
    assert good_1["choices"][0]["completion_tokens"] == good_2["choices"][0]["completion_tokens"] == 12
