"""Masked reductions, response masks and logprob/entropy helpers, checked on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.algorithms import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    response_mask_from_eos,
    zero_masked,
)

NAN = float("nan")


def test_zero_masked_gives_exact_zeros_even_over_nan():
    values = torch.tensor([1.0, NAN, float("inf"), 4.0])
    mask = torch.tensor([1, 0, 0, 1])
    assert_close(zero_masked(values, mask), torch.tensor([1.0, 0.0, 0.0, 4.0]))


def test_masked_sum_and_mean_by_hand():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    # all: 1 + 3 + 4 = 8 over 3 tokens -> 8/3
    assert_close(masked_sum(values, mask), torch.tensor(8.0))
    assert_close(masked_mean(values, mask), torch.tensor(8.0 / 3.0))
    # per row: row 0 -> 1/1 = 1; row 1 -> (3 + 4)/2 = 3.5
    assert_close(masked_sum(values, mask, dim=1), torch.tensor([1.0, 7.0]))
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.0, 3.5]))
    # per column: col 0 -> (1 + 3)/2 = 2; col 1 -> 4/1 = 4
    assert_close(masked_mean(values, mask, dim=0), torch.tensor([2.0, 4.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert_close(masked_mean(torch.tensor([5.0, 6.0]), torch.tensor([0, 0])), torch.tensor(0.0))


def test_masked_var_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    # mean 2; squared deviations 1, 0, 1 -> sum 2; biased 2/3, unbiased 2/2 = 1
    assert_close(masked_var(values, mask, unbiased=False), torch.tensor(2.0 / 3.0))
    assert_close(masked_var(values, mask), torch.tensor(1.0))
    # per row: row 0 = [1, 3] -> mean 2, unbiased var (1 + 1)/1 = 2; row 1 = [5] alone -> 0
    rows = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    assert_close(masked_var(rows, torch.tensor([[1, 1], [1, 0]]), dim=1), torch.tensor([2.0, 0.0]))


def test_masked_whiten_by_hand():
    values = torch.tensor([[2.0, 4.0, 6.0, 123.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 4; unbiased var (4 + 0 + 4)/2 = 4 -> std 2; (v - 4)/2 = -1, 0, 1; masked slot -> 0
    assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False adds the mean back: -1 + 4, 0 + 4, 1 + 4
    assert_close(masked_whiten(values, mask, shift_mean=False), torch.tensor([[3.0, 4.0, 5.0, 0.0]]))


def test_masked_whiten_has_mean_zero_and_unit_variance_over_mask():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 7, generator=generator) * 5 + 3
    mask = (torch.rand(4, 7, generator=generator) > 0.3).long()
    whitened = masked_whiten(values, mask)
    assert_close(masked_mean(whitened, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(masked_var(whitened, mask), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_masked_whiten_ignores_what_masked_positions_hold():
    values = torch.tensor([[2.0, 4.0, 6.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    garbage = values.clone()
    garbage[0, 3] = NAN
    assert_close(masked_whiten(garbage, mask), masked_whiten(values, mask))


def test_response_mask_from_eos_by_hand():
    eos, pad = 2, 0
    response_ids = torch.tensor(
        [
            [5, 6, 2, 0, 0],  # EOS at 2, kept; pads after
            [5, 2, 7, 2, 0],  # only the first EOS counts
            [5, 6, 7, 8, 9],  # no EOS: truncated at the length limit, all valid
            [2, 0, 0, 0, 0],  # EOS straight away
            [5, 6, 0, 0, 0],  # no EOS but padded: ends before the first pad
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ]
    )
    mask = response_mask_from_eos(response_ids, eos, pad)
    assert mask.dtype == torch.long
    assert torch.equal(mask, expected)


def test_response_mask_when_pad_is_eos_and_with_several_eos_ids():
    # pad == eos: the first 2 is the EOS (kept), the rest are padding
    assert torch.equal(response_mask_from_eos(torch.tensor([[5, 2, 2, 2]]), 2, 2), torch.tensor([[1, 1, 0, 0]]))
    # either 2 or 3 ends the answer (e.g. <|im_end|> and <|endoftext|>)
    ids = torch.tensor([[5, 3, 6, 2], [5, 6, 2, 3]])
    assert torch.equal(response_mask_from_eos(ids, [2, 3]), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))


def test_logprobs_from_logits_by_hand():
    # logits [0, ln 3] -> softmax [1/4, 3/4]; logits [0, 0] -> softmax [1/2, 1/2]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # [1, 2, 2]
    labels = torch.tensor([[1, 0]])
    # row 0 picks 3/4 -> ln(3/4); row 1 picks 1/2 -> ln(1/2)
    expected = torch.tensor([[math.log(0.75), math.log(0.5)]])
    assert_close(logprobs_from_logits(logits, labels), expected)
    assert_close(logprobs_from_logits(logits, labels, chunk_size=1), expected)


def test_logprobs_from_logits_matches_log_softmax_and_passes_gradients():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    got = logprobs_from_logits(logits, labels, chunk_size=4)
    reference = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(got, reference)
    got.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # bfloat16 logits are upcast, so the result is float32 and close to the float32 answer
    low_precision = logprobs_from_logits(logits.detach().bfloat16(), labels)
    assert low_precision.dtype == torch.float32
    assert_close(low_precision, reference.detach(), atol=0.05, rtol=0)


def test_entropy_from_logits_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [0.0, float("-inf")]])
    # uniform over 2 -> ln 2
    # [1/4, 3/4] -> -(1/4 ln 1/4 + 3/4 ln 3/4) = 1/4 ln 4 + 3/4 ln(4/3)
    # a banned token (-inf) leaves a certain outcome -> 0, not NaN
    expected = torch.tensor([math.log(2.0), 0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0), 0.0])
    assert_close(entropy_from_logits(logits), expected)
    assert_close(entropy_from_logits(logits.unsqueeze(0), chunk_size=2), expected.unsqueeze(0))


@pytest.mark.parametrize("function", [masked_sum, masked_mean, masked_var])
def test_reductions_ignore_masked_garbage(function):
    values = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0]])
    garbage = torch.tensor([[1.0, 2.0, float("inf")]])
    assert_close(function(garbage, mask), function(values, mask))


def test_truncated_answers_test_the_generation_limit_not_the_widest_answer():
    from chimed_ray.algorithms import truncated_answers

    eos, pad = 2, 0
    responses = torch.tensor([
        [5, 6, 7, 8],  # 4 tokens, no EOS: cut off at max_new_tokens=4
        [5, 6, 7, 2],  # EOS exactly at the limit: finished
        [5, 2, 0, 0],  # finished early
        [5, 6, 7, 0],  # 3 tokens without EOS: stopped by something else, below the limit
    ])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert truncated_answers(responses, mask, [eos], 4).tolist() == [True, False, False, False]
    # The same batch under a limit of 8: nothing reached it, although the last column is valid.
    assert truncated_answers(responses, mask, eos, 8).tolist() == [False, False, False, False]
    assert truncated_answers(responses, mask, eos, 3).tolist() == [True, False, False, True]
    empty = truncated_answers(torch.tensor([[pad]]), torch.tensor([[0]]), eos, 1)
    assert empty.tolist() == [False]
