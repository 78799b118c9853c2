"""Continuous batching without Ray: the HF engine's scheduler on the tiny checkpoint.

A request joins a running batch at the next step and gets the same greedy text as alone; finished
and cancelled rows leave at once; a row that cannot be sampled, prefilled or decoded fails alone; a stuck
generation thread fails the health check. Progress is awaited by token counts, never by timing.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import DynamicCache

from chimed_ray.serving.row_batch import RowBatch
from chimed_ray.serving.sampling import PenaltyBatch, RowState, apply_penalties, make_generator, sample_rows
from chimed_ray.serving.scheduler import ContinuousBatcher


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, one_torch_thread):
    from chimed_ray.serving.hf_engine import HFEngine

    engine = HFEngine(str(tiny_checkpoint), "auto", "auto", False, "sdpa", 0, max_rows=8, max_prefill_tokens=64)
    yield engine
    engine.batcher.close()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


async def until(condition, what: str, limit_s: float = 120.0) -> None:
    """Wait for a condition the engine reaches by itself (a generous bound, not a timing assert)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit_s, f"never happened: {what}"
        await asyncio.sleep(0.005)


def test_greedy_text_is_the_same_alone_and_joining_a_running_batch(engine, tokenizer):
    prompt = ids(tokenizer, "高血压患者应该注意什么")

    async def scenario():
        alone = RowState(prompt_ids=prompt, max_tokens=16, temperature=0.0, ignore_eos=True)
        await engine.generate([alone])
        # Two long sampled rows with prompts shorter and longer than the greedy one.
        running = [RowState(prompt_ids=ids(tokenizer, text), max_tokens=300, temperature=0.9, seed=i, ignore_eos=True)
                   for i, text in enumerate(["咳嗽", "糖尿病患者的饮食应该如何安排才比较合理呢"])]
        background = asyncio.ensure_future(engine.generate(running))
        await until(lambda: all(len(row.token_ids) >= 3 for row in running), "running rows started")
        joined_at = [len(row.token_ids) for row in running]
        joining = RowState(prompt_ids=prompt, max_tokens=16, temperature=0.0, ignore_eos=True)
        await engine.generate([joining])
        still_running = [not row.finished for row in running]
        for row in running:
            row.cancelled = True
        await background
        return alone, joining, joined_at, still_running

    alone, joining, joined_at, still_running = asyncio.run(scenario())
    assert joining.token_ids == alone.token_ids and len(alone.token_ids) == 16
    assert joining.text == alone.text
    assert all(3 <= count < 300 for count in joined_at)  # it joined mid-flight...
    assert all(still_running)  # ...and left on finishing, without waiting for the long rows


def test_rows_with_different_settings_share_steps(engine, tokenizer):
    async def scenario():
        rows = [RowState(prompt_ids=ids(tokenizer, "头痛"), max_tokens=6 + i, temperature=t, top_p=0.8, seed=i)
                for i, t in enumerate([0.0, 0.5, 1.0, 1.5])]
        steps = engine.batcher.stats.steps
        await asyncio.gather(*(engine.generate([row]) for row in rows))
        return rows, engine.batcher.stats.steps - steps

    rows, steps = asyncio.run(scenario())
    assert all(row.finished and 1 <= len(row.token_ids) <= 6 + i for i, row in enumerate(rows))
    assert steps <= 9 + 4  # four requests decoded together, not one after another (>= 24 steps)


def test_a_row_that_cannot_be_sampled_fails_alone(engine, tokenizer):
    """Values the protocol refuses, forced in: NaN probabilities and an RNG seed out of range."""
    prompt = ids(tokenizer, "胸痛")

    async def scenario():
        nan = RowState(prompt_ids=prompt, max_tokens=8, temperature=1e-45)
        overflow = RowState(prompt_ids=prompt, max_tokens=8, temperature=0.7, seed=2**70)
        good = [RowState(prompt_ids=prompt, max_tokens=8, temperature=0.7, seed=i, ignore_eos=True) for i in range(3)]
        # One submission holding bad and good rows, plus a good request submitted beside it.
        await asyncio.gather(engine.generate([good[0], nan, good[1], overflow]), engine.generate([good[2]]))
        return nan, overflow, good

    nan, overflow, good = asyncio.run(scenario())
    assert nan.finish_reason == "error" and "non-finite" in nan.error
    assert overflow.finish_reason == "error" and "Overflow" in overflow.error
    assert all(row.finish_reason == "length" and len(row.token_ids) == 8 for row in good)
    assert engine.batcher.live_rows == 0


def test_a_prefill_that_raises_is_retried_row_by_row(engine, tokenizer, monkeypatch):
    poison = ids(tokenizer, "中毒")
    real_prefill = engine.prefill

    def prefill(prompts):
        if poison in prompts:
            raise RuntimeError("poisoned prompt")
        return real_prefill(prompts)

    monkeypatch.setattr(engine, "prefill", prefill)
    rows = [RowState(prompt_ids=p, max_tokens=5, temperature=0.0, ignore_eos=True)
            for p in (ids(tokenizer, "发热"), poison, ids(tokenizer, "乏力"))]
    asyncio.run(engine.generate(rows))
    assert [row.finish_reason for row in rows] == ["length", "error", "length"]
    assert "poisoned prompt" in rows[1].error


def test_a_decode_step_that_raises_fails_only_the_row_that_fails_again(engine, tokenizer, monkeypatch):
    """The poisoned row's step grows every layer's cache and then raises, as a forward failing
    half-way would; the others are restored, stepped alone, and generate what they would have."""
    poison = ids(tokenizer, "患者中毒后出现恶心呕吐腹痛头晕乏力四肢麻木意识模糊，家属非常着急不知道该怎么办")
    clean = [ids(tokenizer, "发热"), ids(tokenizer, "乏力")]
    assert len(poison) > 2 * max(map(len, clean)) + 8

    def greedy(prompts):
        rows = [RowState(prompt_ids=p, max_tokens=6, temperature=0.0, ignore_eos=True) for p in prompts]
        asyncio.run(engine.generate(rows))
        return rows

    expected = [row.token_ids for row in greedy(clean)]
    real_decode = engine.decode

    def decode(batch, tokens):
        if bool((batch.attention_mask.sum(-1) >= len(poison)).any()):
            real_decode(batch, tokens)  # the cache of every layer grows, then the step fails
            raise RuntimeError("poisoned row")
        return real_decode(batch, tokens)

    monkeypatch.setattr(engine, "decode", decode)
    rows = greedy([clean[0], poison, clean[1]])
    assert [row.finish_reason for row in rows] == ["length", "error", "length"]
    assert "poisoned row" in rows[1].error
    assert [rows[0].token_ids, rows[2].token_ids] == expected
    assert engine.batcher.live_rows == 0


def test_a_scheduler_bug_fails_the_rows_it_held_and_the_thread_goes_on(engine, tokenizer, monkeypatch):
    """A bug between taking rows off the queue and adding them to the batch must not strand them."""
    batcher = engine.batcher
    real = batcher._sample

    def broken_once(slots, logits):
        monkeypatch.setattr(batcher, "_sample", real)
        raise RuntimeError("bug while sampling the first tokens")

    monkeypatch.setattr(batcher, "_sample", broken_once)
    held = RowState(prompt_ids=ids(tokenizer, "腹痛"), max_tokens=4, temperature=0.0)
    batcher.submit([held]).result(timeout=120)  # resolves: failed, not stranded
    assert held.finish_reason == "error" and batcher.live_rows == 0
    after = RowState(prompt_ids=ids(tokenizer, "腹痛"), max_tokens=4, temperature=0.0, ignore_eos=True)
    asyncio.run(engine.generate([after]))
    assert after.finish_reason == "length"


def test_a_cancelled_request_leaves_the_batch_before_generate_returns(engine, tokenizer):
    async def scenario():
        row = RowState(prompt_ids=ids(tokenizer, "咳嗽"), max_tokens=400, temperature=0.8, ignore_eos=True)
        task = asyncio.ensure_future(engine.generate([row]))
        await until(lambda: len(row.token_ids) >= 2, "generation started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return row, engine.batcher.live_rows

    row, live = asyncio.run(scenario())
    assert row.finish_reason == "abort" and len(row.token_ids) < 400
    assert live == 0  # it had already left when the cancellation reached the caller


def test_penalties_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])

    def penalties(repetition, frequency, presence):
        # Row 0 saw tokens {0 (prompt), 1, 3} and generated [1, 1, 3]; row 1 saw and generated nothing.
        seen = torch.tensor([[True, True, False, True], [False] * 4])
        counts = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0] * 4])
        return PenaltyBatch(torch.tensor([repetition, repetition]), torch.tensor([frequency, frequency]),
                            torch.tensor([presence, presence]), seen, counts)

    # repetition 2 over seen tokens: 2 -> 1, -1 -> -2, 3 -> 1.5; token 2 untouched.
    # frequency 0.5 and presence 0.25: token 1 -= 2 * 0.5 + 0.25, token 3 -= 0.5 + 0.25.
    out = apply_penalties(logits, penalties(2.0, 0.5, 0.25))
    assert torch.allclose(out, torch.tensor([[1.0, -3.25, 0.5, 0.75], [2.0, -1.0, 0.5, 3.0]]))
    assert torch.equal(logits[0], torch.tensor([2.0, -1.0, 0.5, 3.0]))  # the caller's tensor is untouched
    assert torch.equal(apply_penalties(logits, penalties(1.0, 0.0, 0.0)), logits)


def test_sampling_is_greedy_nucleus_and_seeded_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]] * 3)
    temperature, top_p = torch.tensor([0.0, 2.0, 1.5]), torch.tensor([1.0, 0.01, 1.0])

    def draw(seed):
        tokens, valid = sample_rows(logits, temperature, top_p, [make_generator(seed + i, "cpu") for i in range(3)])
        assert valid.all()
        return tokens.tolist()

    draws = [draw(seed) for seed in range(0, 150, 3)]
    assert {d[0] for d in draws} == {1}  # greedy
    assert {d[1] for d in draws} == {1}  # top_p this small keeps only the most likely token
    assert len({d[2] for d in draws}) > 1 and draws == [draw(seed) for seed in range(0, 150, 3)]  # seeded
    nan, valid = sample_rows(torch.tensor([[0.0, 1.0]]) / 1e-45, torch.tensor([1.0]), torch.tensor([1.0]),
                             [make_generator(0, "cpu")])
    assert not valid[0]


def test_the_serving_default_penalty_breaks_a_greedy_loop(engine, tokenizer):
    """The fresh tiny model loops greedily; the default repetition penalty (1.1) must break it."""
    def repeated_tokens(penalty: float) -> int:
        """How many of the 48 greedy tokens repeat an earlier one."""
        row = RowState(prompt_ids=ids(tokenizer, "高血压患者"), max_tokens=48, temperature=0.0, ignore_eos=True,
                       repetition_penalty=penalty)
        asyncio.run(engine.generate([row]))
        return len(row.token_ids) - len(set(row.token_ids))

    from chimed_ray.config.serve import EngineConfig

    unpenalised = repeated_tokens(1.0)
    assert unpenalised >= 4, unpenalised  # without a penalty the greedy answer comes round again
    penalised = repeated_tokens(EngineConfig().repetition_penalty)
    assert penalised < unpenalised, (penalised, unpenalised)


class StuckModel:
    """A step model whose decode blocks until released: a hung generation thread."""

    device = "cpu"
    eos_ids = {0}

    def __init__(self):
        self.release = threading.Event()

    def prefill(self, prompts):
        empty = RowBatch(cache=DynamicCache(), attention_mask=torch.ones(len(prompts), 1, dtype=torch.long))
        return torch.zeros(len(prompts), 4), empty

    def decode(self, batch, tokens):
        self.release.wait(30)
        return torch.zeros(len(tokens), 4), batch

    def decode_text(self, token_ids):
        return "x" * len(token_ids)


def test_health_check_notices_a_stuck_generation_thread():
    model = StuckModel()
    batcher = ContinuousBatcher(model, max_rows=2, max_prefill_tokens=8, stall_timeout_s=0.2)
    try:
        batcher.check_health()  # idle is healthy
        future = batcher.submit([RowState(prompt_ids=[1], max_tokens=3, temperature=0.0, ignore_eos=True)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                batcher.check_health()
            except RuntimeError as exc:
                assert "no progress" in str(exc)
                break
            time.sleep(0.05)
        else:
            pytest.fail("check_health never noticed the stuck decode")
        model.release.set()
        future.result(timeout=30)
        batcher.check_health()  # progress again: healthy
    finally:
        model.release.set()
        batcher.close()
