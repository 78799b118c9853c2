"""Model backends on the tiny checkpoint (batched == one at a time) and against a fake OpenAI server."""

from __future__ import annotations

import math

import pytest

from chimed_ray.evaluation.records import EvalRequest
from chimed_ray.evaluation.scoring import HFScorer, OpenAIBackend

QUESTIONS = ["感冒怎么办？", "高血压患者平时要注意什么饮食？请详细说明。", "胃痛"]


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> HFScorer:
    return HFScorer(str(tiny_checkpoint), "fp32", max_prompt_length=256, device="cpu")


def _prompts(scorer: HFScorer) -> list[str]:
    return [scorer.render([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_prompt_uses_chimed_format(scorer):
    assert _prompts(scorer)[0] == "[human]:感冒怎么办？\n[bot]:"


def test_batched_option_logprobs_match_one_at_a_time(scorer):
    prompts = _prompts(scorer)
    options = [["A", "B", "C", "D"], ["1", "2", "3", "4", "5"], ["A", "B"]]
    batched = scorer.option_logprobs(prompts, options)
    for prompt, labels, row in zip(prompts, options, batched):
        (alone,) = scorer.option_logprobs([prompt], [labels])
        assert row == pytest.approx(alone, abs=1e-4)
        assert len(row) == len(labels) and all(v < 0 for v in row)
        # Normalised over the whole vocabulary, so the options share less than all the mass.
        assert sum(math.exp(v) for v in row) < 1.0


def test_labels_must_start_with_distinct_tokens(scorer):
    with pytest.raises(ValueError, match="distinct first tokens"):
        scorer.option_logprobs(_prompts(scorer)[:1], [["A", "A"]])


def test_batched_greedy_generation_matches_one_at_a_time(scorer):
    prompts = _prompts(scorer)
    batched = scorer.generate(prompts, max_new_tokens=6)
    assert batched == [scorer.generate([p], max_new_tokens=6)[0] for p in prompts]


def test_run_answers_mixed_requests_in_order(scorer):
    requests = [
        EvalRequest("g/0", [{"role": "user", "content": QUESTIONS[1]}], max_new_tokens=4),
        EvalRequest("c/0", [{"role": "user", "content": QUESTIONS[0]}], options=["A", "B"]),
        EvalRequest("g/1", [{"role": "user", "content": QUESTIONS[2]}], max_new_tokens=4),
    ]
    seen = []
    responses = scorer.run(requests, batch_size=2, on_done=seen.append)
    assert [r.uid for r in responses] == ["g/0", "c/0", "g/1"]
    assert len(responses[1].option_logprobs) == 2 and responses[1].text == ""
    assert responses[0].option_logprobs == [] and sum(seen) == 3


def test_openai_backend_generates_and_refuses_options(fake_openai):
    base_url, received = fake_openai
    backend = OpenAIBackend(base_url, "chimed", api_key="", max_concurrency=2)
    requests = [
        EvalRequest(f"qa/{i}", [{"role": "user", "content": q}], max_new_tokens=9) for i, q in enumerate(QUESTIONS)
    ]
    responses = backend.run(requests)
    assert [r.text for r in responses] == ["注意休息，多喝水。"] * 3
    assert {r["max_tokens"] for r in received} == {9} and {r["temperature"] for r in received} == {0.0}
    with pytest.raises(ValueError, match="cannot score options"):
        backend.complete(EvalRequest("mcq/0", [{"role": "user", "content": "q"}], options=["A", "B"]))
