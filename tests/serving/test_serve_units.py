"""Pieces of the server without Ray: decoding state, sampling, request preparation, the HF engine."""

from __future__ import annotations

import pytest

from chimed_ray.serving.jobs import Limits, RequestError, prepare_job
from chimed_ray.serving.protocol import GenerationRequest
from chimed_ray.serving.sampling import RowState

CHAT = [[{"role": "user", "content": "头痛怎么办"}]]


def feed(row: RowState, pieces: list[str], eos: int = -1) -> list[str]:
    """Drive a row with a fake vocabulary where token i decodes to pieces[i]."""
    deltas: list[str] = []
    row.listener = lambda _, delta: deltas.append(delta)
    for token in range(len(pieces)):
        row.add_token(token, lambda ids: "".join(pieces[i] for i in ids), {eos})
    return deltas


def test_stop_string_is_cut_and_its_prefix_never_streamed():
    row = RowState(prompt_ids=[0], max_tokens=10, stop=["[human]"])
    deltas = feed(row, ["答", "案", "[hu", "man]", "多余"])
    assert row.text == "答案" and row.finish_reason == "stop"
    assert "".join(deltas) == "答案" and all("[" not in d for d in deltas)
    assert len(row.token_ids) == 4  # generation stopped where the stop string completed


def test_half_a_utf8_character_is_held_back():
    row = RowState(prompt_ids=[0], max_tokens=3)
    deltas = feed(row, ["a\ufffd", "b", "c"])
    assert deltas[0] == "a" and row.finish_reason == "length" and "".join(deltas) == row.text


def test_eos_finishes_without_its_text_unless_ignored():
    row = RowState(prompt_ids=[0], max_tokens=5)
    feed(row, ["x", "</s>", "y"], eos=1)
    assert (row.text, row.finish_reason, len(row.token_ids)) == ("x", "stop", 2)
    ignoring = RowState(prompt_ids=[0], max_tokens=3, ignore_eos=True)
    feed(ignoring, ["x", "</s>", "y"], eos=1)
    assert ignoring.finish_reason == "length" and len(ignoring.token_ids) == 3


def test_cancelled_row_stops_at_the_next_token():
    row = RowState(prompt_ids=[0], max_tokens=5)
    row.cancelled = True
    feed(row, ["x"])
    assert row.finish_reason == "abort" and row.token_ids == []


def limits(**kwargs) -> Limits:
    base = dict(max_context=64, default_max_tokens=16, max_n=4, max_sequences=8, chat_stop=["[human]:"])
    return Limits(**{**base, **kwargs})


def request(**kwargs) -> GenerationRequest:
    base = dict(request_id="r", kind="chat", prompts=CHAT, max_tokens=None)
    return GenerationRequest(**{**base, **kwargs})


def test_prepare_job_renders_the_chat_template_and_expands_n(tokenizer):
    job = prepare_job(request(n=3, seed=10, stop=["。"]), tokenizer, limits())
    text = tokenizer.apply_chat_template(CHAT[0], add_generation_prompt=True, tokenize=False)
    assert text == "[human]:头痛怎么办\n[bot]:"
    assert job.rows[0].prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [r.seed for r in job.rows] == [10, 11, 12] and [r.choice_index for r in job.rows] == [0, 1, 2]
    assert job.rows[0].stop == ["。", "[human]:"]
    assert job.rows[0].max_tokens == 16 and job.prompt_tokens == len(job.rows[0].prompt_ids)


def test_prepare_job_completion_prompts_do_not_get_chat_stops(tokenizer):
    job = prepare_job(request(kind="completion", prompts=["a", "bb"], n=2), tokenizer, limits())
    assert [r.prompt_index for r in job.rows] == [0, 0, 1, 1] and job.rows[0].stop == []


@pytest.mark.parametrize(
    "changes, param, code",
    [
        ({"n": 5}, "n", None),
        ({"kind": "completion", "prompts": ["a"] * 3, "n": 3}, "n", None),
        ({"max_tokens": 60}, "max_tokens", "context_length_exceeded"),
        ({"prompts": [[{"role": "user", "content": "患者发热" * 80}]]}, "messages", "context_length_exceeded"),
    ],
)
def test_prepare_job_rejects_what_cannot_be_served(tokenizer, changes, param, code):
    with pytest.raises(RequestError) as caught:
        prepare_job(request(**changes), tokenizer, limits())
    assert caught.value.status == 400 and caught.value.param == param and caught.value.code == code


def test_vllm_engine_without_vllm_names_the_fix(monkeypatch):
    import sys

    from chimed_ray.config.serve import BatchingConfig, EngineConfig
    from chimed_ray.serving.model_server import build_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(RuntimeError, match=r"engine.engine=vllm .*pip install vllm.*engine.engine=hf"):
        build_engine("/unused", EngineConfig(engine="vllm"), BatchingConfig())
