"""Per-token rewards from sequence scores and KL, checked on hand-worked numbers."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from chimed_ray.algorithms import last_token_index, token_level_rewards


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert torch.equal(last_token_index(mask), torch.tensor([2, 1, 0, 0]))


def test_token_level_rewards_by_hand():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # kl_coef 0.5: penalties -0.05, -0.10, -0.15 | -0.20, -0.25, (masked)
    # row 0 ends at t=2: -0.15 + 1.0 = 0.85;  row 1 ends at t=1: -0.25 + 2.0 = 1.75
    expected = torch.tensor([[-0.05, -0.10, 0.85], [-0.20, 1.75, 0.0]])
    assert_close(token_level_rewards(scores, kl, mask, kl_coef=0.5), expected)


def test_zero_kl_coef_puts_only_the_score_on_the_last_token():
    rewards = token_level_rewards(torch.tensor([3.0]), torch.ones(1, 4), torch.tensor([[1, 1, 0, 0]]), kl_coef=0.0)
    assert_close(rewards, torch.tensor([[0.0, 3.0, 0.0, 0.0]]))


def test_masked_kl_garbage_and_empty_rows_give_zeros():
    kl = torch.tensor([[0.2, float("nan")], [float("inf"), 1.0]])
    mask = torch.tensor([[1, 0], [0, 0]])
    # row 0: -0.1 * 0.2 + 5 = 4.98 on t=0; row 1 has no tokens, so its score is dropped
    rewards = token_level_rewards(torch.tensor([5.0, 7.0]), kl, mask, kl_coef=0.1)
    assert_close(rewards, torch.tensor([[4.98, 0.0], [0.0, 0.0]]))
