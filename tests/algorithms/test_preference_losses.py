"""Reward-model pairwise loss and DPO / IPO / SimPO / ORPO, on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.algorithms import PREFERENCE_LOSSES, dpo, ipo, orpo, pairwise_reward_loss, simpo


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------- pairwise reward loss


def test_pairwise_reward_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # differences 1 and -1: -log sigmoid(1) = log(1 + e^-1), -log sigmoid(-1) = log(1 + e^1)
    loss, metrics = pairwise_reward_loss(chosen, rejected)
    assert_close(loss, torch.tensor((softplus(-1.0) + softplus(1.0)) / 2.0))
    assert_close(metrics["reward_accuracy"], torch.tensor(0.5))
    assert_close(metrics["reward_margin"], torch.tensor(0.0))
    assert_close(metrics["chosen_rewards"], torch.tensor(1.0))


def test_pairwise_reward_loss_with_margin_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # margin 0.5: differences 0.5 and -1.5 -> log(1 + e^-0.5), log(1 + e^1.5)
    loss, metrics = pairwise_reward_loss(chosen, rejected, margin=0.5)
    assert_close(loss, torch.tensor((softplus(-0.5) + softplus(1.5)) / 2.0))
    assert_close(metrics["reward_accuracy"], torch.tensor(0.5))  # accuracy ignores the margin
    # per-pair margins: [1, 0] -> differences 0 and -1 -> log 2 and log(1 + e)
    loss, _ = pairwise_reward_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    assert_close(loss, torch.tensor((math.log(2.0) + softplus(1.0)) / 2.0))


# ------------------------------------------------------------------------------------------ dpo


def test_dpo_by_hand():
    chosen, rejected = torch.tensor([-1.0, -2.0], requires_grad=True), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0, -1.5]), torch.tensor([-2.0, -1.5])
    # pair 0: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1 -> h = 2, beta h = 1
    # pair 1: chosen -2 - (-1.5) = -0.5, rejected -1 - (-1.5) = 0.5 -> h = -1, beta h = -0.5
    loss, metrics = dpo(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    assert_close(loss, torch.tensor((softplus(-1.0) + softplus(0.5)) / 2.0))
    # rewards beta * log-ratio: chosen [0.5, -0.25], rejected [-0.5, 0.25]
    assert_close(metrics["chosen_rewards"], torch.tensor(0.125))
    assert_close(metrics["rejected_rewards"], torch.tensor(-0.125))
    assert_close(metrics["reward_margin"], torch.tensor(0.25))  # mean(1, -0.5)
    assert_close(metrics["reward_accuracy"], torch.tensor(0.5))
    # d/d chosen_0 of -log sigmoid(beta h_0)/2 = -beta (1 - sigmoid(1)) / 2
    loss.backward()
    assert_close(chosen.grad, torch.tensor([-0.5 * (1 - sigmoid(1.0)) / 2, -0.5 * (1 - sigmoid(-0.5)) / 2]))


def test_dpo_label_smoothing_by_hand():
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    # beta h = 1: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1)
    loss, _ = dpo(*args, beta=0.5, label_smoothing=0.1)
    assert_close(loss, torch.tensor(0.9 * softplus(-1.0) + 0.1 * softplus(1.0)))


def test_dpo_at_the_reference_policy_is_log_two():
    logps = torch.tensor([-4.0, -7.0])
    loss, metrics = dpo(logps, logps + 1, logps, logps + 1)
    # h = 0 for every pair: -log sigmoid(0) = log 2; no pair is won
    assert_close(loss, torch.tensor(math.log(2.0)))
    assert metrics["reward_accuracy"] == 0


def test_dpo_without_reference_is_rejected():
    with pytest.raises(ValueError, match="reference"):
        dpo(torch.tensor([-1.0]), torch.tensor([-2.0]), None, None)


# ------------------------------------------------------------------------------------------ ipo


def test_ipo_by_hand():
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    # h = 2; beta 0.5: (2 - 1/(2*0.5))^2 = (2 - 1)^2 = 1; beta 0.25: (2 - 2)^2 = 0
    assert_close(ipo(*args, beta=0.5)[0], torch.tensor(1.0))
    assert_close(ipo(*args, beta=0.25)[0], torch.tensor(0.0))
    _, metrics = ipo(*args, beta=0.5)
    assert_close(metrics["chosen_rewards"], torch.tensor(0.5))  # 0.5 * 1


# ---------------------------------------------------------------------------------------- simpo


def test_simpo_by_hand():
    # average logprobs: chosen -0.5, rejected -1.5; beta 2, gamma 1
    # 2 * -0.5 - 2 * -1.5 - 1 = -1 + 3 - 1 = 1 -> log(1 + e^-1)
    loss, metrics = simpo(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=2.0, gamma=1.0)
    assert_close(loss, torch.tensor(softplus(-1.0)))
    assert_close(metrics["chosen_rewards"], torch.tensor(-1.0))
    assert_close(metrics["rejected_rewards"], torch.tensor(-3.0))
    assert_close(metrics["reward_margin"], torch.tensor(2.0))
    assert_close(metrics["reward_accuracy"], torch.tensor(1.0))


# ----------------------------------------------------------------------------------------- orpo


def test_orpo_by_hand():
    # P(chosen) = 0.5 -> odds 1; P(rejected) = 0.25 -> odds 1/3; log odds ratio = ln 1 - ln(1/3) = ln 3
    # -log sigmoid(ln 3) = -log(3/4); times lambda 0.1
    loss, metrics = orpo(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), lambda_=0.1)
    assert_close(loss, torch.tensor(-0.1 * math.log(0.75)))
    assert_close(metrics["log_odds_ratio"], torch.tensor(math.log(3.0)))
    # rewards lambda * average logprob: 0.1 ln 0.5 and 0.1 ln 0.25
    assert_close(metrics["chosen_rewards"], torch.tensor(0.1 * math.log(0.5)))
    assert_close(metrics["rejected_rewards"], torch.tensor(0.1 * math.log(0.25)))
    assert_close(metrics["reward_accuracy"], torch.tensor(1.0))


# ------------------------------------------------------------------------------------- registry


def test_every_preference_loss_takes_the_same_call():
    assert sorted(PREFERENCE_LOSSES) == ["dpo", "ipo", "orpo", "simpo"]
    chosen, rejected = torch.tensor([-0.4, -0.9]), torch.tensor([-1.2, -0.7])
    for name in PREFERENCE_LOSSES:
        loss, metrics = PREFERENCE_LOSSES.lookup(name)(chosen, rejected, chosen - 0.1, rejected + 0.1)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert {"chosen_rewards", "rejected_rewards", "reward_margin", "reward_accuracy"} <= set(metrics)
    with pytest.raises(ValueError, match="simpo"):
        PREFERENCE_LOSSES.lookup("kto")


def test_ipo_pair_loss_is_length_normalised_like_trl():
    from chimed_ray.trainers.dpo import pair_loss

    # chosen: 4 tokens, sum -8 (ref -12); rejected: 2 tokens, sum -6 (ref -4).
    # per token: chosen -2 vs ref -3 -> +1; rejected -3 vs ref -2 -> -1; h = 2.
    # beta 0.5: (2 - 1)^2 = 1. With sums the gap would be 4 - (-2) = 6 and the loss 25.
    sums, counts = torch.tensor([-8.0, -6.0]), torch.tensor([4, 2])
    loss, metrics = pair_loss(sums, counts, torch.tensor([-12.0]), torch.tensor([-4.0]), "ipo", {"beta": 0.5})
    assert_close(loss, torch.tensor(1.0))
    assert_close(metrics["reward_margin"], torch.tensor(1.0))  # 0.5 * 1 - 0.5 * (-1)
    assert_close(metrics["chosen_logps"], torch.tensor(-2.0))
