"""The OpenAI API end to end: two tiny checkpoints on the local Ray cluster, the official `openai`
client for the happy paths and raw HTTP for every bad request, with a health check after each."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import requests

CHAT = [{"role": "user", "content": "患者发热咳嗽三天，怎么办？"}]


@pytest.fixture(scope="module")
def client(served):
    import openai

    return openai.OpenAI(base_url=served.url, api_key=served.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def baseline(served):
    """Replica pids before any test: a crash-and-restart would change them."""
    return _health(served)


def _health(served) -> dict:
    response = requests.get(f"{served.root}/health", timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    return {name: info["pid"] for name, info in body["models"].items()}


def assert_healthy(served, baseline) -> None:
    from ray import serve

    assert _health(served) == baseline
    app = serve.status().applications["chimed-ray-test"]
    assert app.status == "RUNNING"
    for deployment in app.deployments.values():
        assert deployment.status == "HEALTHY", deployment


def test_models_are_listed(client, served):
    assert sorted(model.id for model in client.models.list().data) == ["tiny", "tiny-b"]
    response = requests.get(f"{served.url}/models/tiny-b", headers=served.headers(), timeout=30)
    assert response.status_code == 200 and response.json()["id"] == "tiny-b"


def test_chat_completion_uses_the_chat_template_and_counts_usage(client, tokenizer):
    response = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0.8, seed=7)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("[bot]:")
    assert response.object == "chat.completion" and response.model == "tiny"
    assert response.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    again = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0.8, seed=7)
    assert again.choices[0].message.content == choice.message.content  # same seed, same sample


def test_completion_on_two_models(client):
    kwargs = dict(prompt="高血压患者", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    first = client.completions.create(model="tiny", **kwargs)
    second = client.completions.create(model="tiny-b", **kwargs)
    for response in (first, second):
        assert response.object == "text_completion"
        assert response.usage.completion_tokens == 12 and response.choices[0].finish_reason == "length"
    assert first.choices[0].text != second.choices[0].text  # different weights, different greedy text
    assert client.completions.create(model="tiny", **kwargs).choices[0].text == first.choices[0].text


def test_n_choices_and_stop_strings(client):
    greedy = client.completions.create(model="tiny", prompt="糖尿病", max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    stop = greedy[len(greedy) // 2: len(greedy) // 2 + 2]
    cut = client.completions.create(model="tiny", prompt="糖尿病", max_tokens=12, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    many = client.completions.create(model="tiny", prompt="糖尿病", max_tokens=6, n=3, temperature=1.0, seed=3)
    assert sorted(choice.index for choice in many.choices) == [0, 1, 2]
    assert 3 <= many.usage.completion_tokens <= 18


def test_streaming_chat_matches_the_full_answer(client):
    kwargs = dict(model="tiny", messages=CHAT, max_tokens=10, temperature=0)
    full = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_streaming_completion_sse_ends_with_done(served):
    body = {"model": "tiny-b", "prompt": "头痛", "max_tokens": 5, "n": 2, "stream": True, "seed": 1}
    response = requests.post(f"{served.url}/completions", json=body, headers=served.headers(), timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and response.text.endswith("data: [DONE]\n\n")
    choices = [json.loads(event)["choices"][0] for event in events[:-1]]
    assert {choice["index"] for choice in choices if choice["finish_reason"]} == {0, 1}


def replica_records(served, model: str = "tiny") -> list[dict]:
    """The replica's last finished requests (through a deployment handle, not HTTP)."""
    from ray import serve

    handle = serve.get_deployment_handle(f"Model_{model}", app_name="chimed-ray-test")
    return handle.recent_requests.remote().result(timeout_s=60)


def wait_for_record(served, known: set[str], stream: bool) -> dict:
    """The first new request record with status cancelled (written once its rows left the engine)."""
    for _ in range(600):
        for record in replica_records(served):
            if record["request_id"] not in known and record["stream"] == stream and record["status"] == "cancelled":
                return record
        time.sleep(0.1)
    raise AssertionError("the replica never recorded the cancelled request")


def test_client_leaving_mid_stream_does_not_hurt_the_replica(served, client, baseline):
    known = {record["request_id"] for record in replica_records(served)}
    body = {"model": "tiny", "prompt": "咳嗽", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with requests.post(f"{served.url}/completions", json=body, headers=served.headers(), stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: ")
    record = wait_for_record(served, known, stream=True)
    assert record["completion_tokens"] < 400  # its rows stopped early; they did not run to max_tokens
    after = client.completions.create(model="tiny", prompt="咳嗽", max_tokens=3)
    assert after.usage.completion_tokens >= 1
    assert_healthy(served, baseline)


def test_non_streaming_client_leaving_stops_its_generation(served, baseline):
    known = {record["request_id"] for record in replica_records(served)}
    # Four rows (the served max_n) of 400 tokens: far more than the ~0.2 s before the client leaves
    # can produce, on an idle machine too (one 400-token row alone finished in 0.6 s).
    rows, max_tokens = 4, 400
    body = json.dumps({"model": "tiny", "prompt": "咳嗽", "max_tokens": max_tokens, "n": rows,
                       "ignore_eos": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {served.api_key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(head + body)
        time.sleep(0.2)  # let generation start; the check below holds however far it got
    record = wait_for_record(served, known, stream=False)
    assert record["completion_tokens"] < rows * max_tokens
    assert_healthy(served, baseline)


def test_only_the_exact_health_route_is_open(served, baseline):
    for path in ("/v1/models/tiny/health", "/v1/models/tiny-b/health", "/v1/models/nope/health", "/v1/health",
                 "/health/../v1/models"):
        response = requests.get(f"{served.root}{path}", timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert "tiny" not in response.text
    assert requests.post(f"{served.root}/health", timeout=30).status_code == 401
    missing = requests.get(f"{served.url}/models/nope", headers=served.headers(), timeout=30)
    assert missing.status_code == 404 and "tiny" not in missing.text  # a 404 does not list the models
    assert requests.get(f"{served.root}/health", timeout=30).status_code == 200
    assert_healthy(served, baseline)


def test_a_huge_body_is_refused_unread_while_a_stream_keeps_flowing(served, baseline):
    from concurrent.futures import ThreadPoolExecutor

    stream_body = {"model": "tiny", "prompt": "发热", "max_tokens": 120, "ignore_eos": True, "stream": True,
                   "stream_options": {"include_usage": True}}

    def stream() -> int:
        response = requests.post(f"{served.url}/completions", json=stream_body, headers=served.headers(), timeout=120)
        events = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
        return json.loads(events[-2])["usage"]["completion_tokens"]

    huge = json.dumps({"model": "tiny", "prompt": "病" * (20 * 1024 * 1024 // 3)})
    headers = {**served.headers(), "Content-Type": "application/json"}
    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(stream)
        start = time.perf_counter()
        refused = requests.post(f"{served.url}/completions", data=huge.encode(), headers=headers, timeout=60)
        elapsed = time.perf_counter() - start
        chunked = requests.post(f"{served.url}/completions", data=iter([huge.encode()[i:i + 2**20]
                                                                        for i in range(0, len(huge.encode()), 2**20)]),
                                headers=headers, timeout=60)  # no Content-Length: capped while reading
        assert streaming.result() == 120
    print(f"20 MB body refused in {elapsed:.2f} s")
    for response in (refused, chunked):
        assert response.status_code == 413, response.text[:200]
        assert response.json()["error"]["code"] == "request_too_large"
    assert elapsed < 30  # a generous bound: it took 23 s before the cap, well under 1 s with it
    assert_healthy(served, baseline)


def test_hostile_mix_fails_only_the_bad_requests(served, baseline):
    from concurrent.futures import ThreadPoolExecutor

    good = {"model": "tiny", "prompt": "高血压", "max_tokens": 8, "ignore_eos": True, "temperature": 0.7}
    bad = [{**good, "temperature": 1e-40}, {**good, "seed": 2**64}, {**good, "stop": ["x"] * 2000},
           {**good, "presence_penalty": 1e9}, {**good, "n": 2, "seed": 2**63 - 1}]
    bodies = [dict(good, seed=i) for i in range(12)]
    for index, body in enumerate(bad):
        bodies.insert(2 * index + 1, body)

    def call(body):
        return requests.post(f"{served.url}/completions", json=body, headers=served.headers(), timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, bodies))
    for body, response in zip(bodies, responses):
        if body in bad:
            assert response.status_code == 400, response.text
        else:
            assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 8
    assert_healthy(served, baseline)


def test_concurrent_requests_share_forward_passes(served, client, baseline):
    import openai

    async def burst():
        async with openai.AsyncOpenAI(base_url=served.url, api_key=served.api_key, max_retries=0) as aclient:
            calls = [
                aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=t, seed=i,
                                                top_p=0.9, extra_body={"ignore_eos": True})
                for i, t in enumerate([0.0, 0.3, 0.7, 1.0, 1.3, 0.0])
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.usage.completion_tokens == 16 for r in responses)
    alone = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0.0,
                                           extra_body={"ignore_eos": True})
    assert responses[0].choices[0].message.content == alone.choices[0].message.content
    info = requests.get(f"{served.root}/health", timeout=30).json()["models"]["tiny"]
    assert info["batching"] and info["largest_batch"] > 1
    assert_healthy(served, baseline)


TOO_LONG = "患者发热咳嗽" * 600
BAD_REQUESTS = [
    ("chat/completions", "{not json", 400, None, "invalid_json"),
    ("chat/completions", "[1, 2]", 400, None, None),
    ("chat/completions", {"messages": CHAT}, 400, "model", "missing"),
    ("chat/completions", {"model": "tiny"}, 400, "messages", "missing"),
    ("chat/completions", {"model": "tiny", "messages": []}, 400, "messages", None),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "doctor", "content": "x"}]}, 400, "messages.0.role",
     None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "temperature": 3}, 400, "temperature", None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "top_p": 0}, 400, "top_p", None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 0}, 400, "max_tokens", None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "n": "two"}, 400, "n", None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "n": 5}, 400, "n", None),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "stop": 5}, 400, None, None),
    ("chat/completions", {"model": "nope", "messages": CHAT}, 404, "model", "model_not_found"),
    ("chat/completions", {"model": "nope", "messages": CHAT, "stream": True}, 404, "model", "model_not_found"),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": TOO_LONG}]}, 400, "messages",
     "context_length_exceeded"),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": TOO_LONG}], "stream": True}, 400,
     "messages", "context_length_exceeded"),
    ("chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 100000}, 400, "max_tokens",
     "context_length_exceeded"),
    ("completions", {"model": "tiny", "prompt": [1, 2, 3]}, 400, None, None),
    ("completions", {"model": "tiny", "prompt": "x", "temperature": 1e-40}, 400, "temperature", None),
    ("completions", '{"model": "tiny", "prompt": "x", "temperature": NaN}', 400, "temperature", None),
    ("completions", {"model": "tiny", "prompt": "x", "seed": 2**64}, 400, "seed", None),
    ("completions", {"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ("completions", {"model": "tiny", "prompt": "x", "stop": ["s" * 2000]}, 400, "stop", None),
    ("completions", {"model": "tiny", "prompt": "x", "frequency_penalty": 1e400}, 400, "frequency_penalty", None),
    ("completions", {"model": "tiny-b", "prompt": TOO_LONG}, 400, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize("path, body, status, param, code", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_replicas_survive(served, baseline, path, body, status, param, code):
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {**served.headers(), "Content-Type": "application/json"}
    response = requests.post(f"{served.url}/{path}", data=data, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert_healthy(served, baseline)


def test_api_key_is_required(served, baseline):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": served.api_key}):
        response = requests.post(f"{served.url}/completions", json=body, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    garbage = requests.post(f"{served.url}/chat/completions", data="{oops", timeout=30)
    assert garbage.status_code == 401  # the key is checked before the body is even parsed
    assert requests.get(f"{served.url}/models", timeout=30).status_code == 401
    assert requests.get(f"{served.root}/health", timeout=30).status_code == 200
    assert_healthy(served, baseline)


def test_overload_answers_503_and_recovers(served, baseline):
    """tiny-b takes one request and queues one; a burst of eight must shed load, not crash."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "tiny-b", "prompt": "胸闷", "max_tokens": 96, "ignore_eos": True}

    def call(_):
        return requests.post(f"{served.url}/completions", json=body, headers=served.headers(), timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert int(response.headers["Retry-After"]) >= 1
    assert_healthy(served, baseline)


def test_cli_printed_the_endpoint_and_returned(served):
    """The module's app was started by `chimed-ray serve ... block=false` (see conftest)."""
    assert f"tiny, tiny-b at http://127.0.0.1:{served.port}/v1" in served.printed
    assert "serving until Ctrl-C" not in served.printed
