"""PPO clipped surrogate, loss aggregation, value loss and entropy bonus, on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.algorithms import POLICY_LOSSES, agg_loss, entropy_bonus, ppo_clip, value_loss

NAN = float("nan")


def ppo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three tokens with ratios 1.5, 0.5, 1.1 and advantages 1, -1, 2."""
    old_logprobs = torch.tensor([[-1.0, -1.0, -1.0]])
    logprobs = (old_logprobs + torch.log(torch.tensor([[1.5, 0.5, 1.1]]))).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    return logprobs, old_logprobs, advantages, torch.ones(1, 3)


# ------------------------------------------------------------------------------------- agg_loss


def test_agg_loss_modes_by_hand():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token_mean: (1 + 2 + 3 + 4)/4 = 2.5
    assert_close(agg_loss(loss_mat, mask, "token_mean"), torch.tensor(2.5))
    # seq_mean_token_mean: mean(6/3, 4/1) = mean(2, 4) = 3
    assert_close(agg_loss(loss_mat, mask, "seq_mean_token_mean"), torch.tensor(3.0))
    # seq_mean_token_sum: mean(6, 4) = 5
    assert_close(agg_loss(loss_mat, mask, "seq_mean_token_sum"), torch.tensor(5.0))
    with pytest.raises(ValueError, match="token_mean"):
        agg_loss(loss_mat, mask, "token-mean")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- ppo_clip


def test_ppo_clip_by_hand():
    logprobs, old_logprobs, advantages, mask = ppo_case()
    loss, metrics = ppo_clip(logprobs, old_logprobs, advantages, mask, clip_eps_low=0.2)
    # t0: r=1.5, A=1:  min(1.5*1, 1.2*1) = 1.2     -> -1.2 (clipped)
    # t1: r=0.5, A=-1: min(-0.5, 0.8*-1 = -0.8)    -> 0.8  (clipped)
    # t2: r=1.1, A=2:  min(2.2, 2.2)               -> -2.2
    # token_mean: (-1.2 + 0.8 - 2.2)/3 = -2.6/3
    assert_close(loss, torch.tensor(-2.6 / 3.0))
    assert_close(metrics["clip_fraction"], torch.tensor(2.0 / 3.0))
    # approx_kl = mean(old - new) = mean(-ln 1.5, -ln 0.5, -ln 1.1)
    expected_kl = -(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3.0
    assert_close(metrics["approx_kl"], torch.tensor(expected_kl))
    # clipped tokens get no gradient; t2: d(-A r)/d logp = -A r = -2.2, over 3 tokens
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -2.2 / 3.0]]))


def test_ppo_clip_higher_widens_only_the_upper_bound():
    logprobs, old_logprobs, advantages, mask = ppo_case()
    loss, _ = ppo_clip(logprobs, old_logprobs, advantages, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    # t0 now clips at 1.28 -> -1.28; t1 (lower side) still 0.8; t2 -2.2: (-1.28 + 0.8 - 2.2)/3
    assert_close(loss, torch.tensor(-2.68 / 3.0))


def test_ppo_dual_clip_caps_negative_advantage_tokens():
    old_logprobs = torch.zeros(1, 2)
    logprobs = torch.log(torch.tensor([[5.0, 5.0]]))
    advantages = torch.tensor([[-1.0, 1.0]])
    mask = torch.ones(1, 2)
    # t0: r=5, A=-1: max(-A r, -A clip(r)) = max(5, 1.2) = 5; dual clip caps at -A c = 3
    # t1: r=5, A=1: max(-5, -1.2) = -1.2 (A > 0 is never dual-clipped)
    plain, _ = ppo_clip(logprobs, old_logprobs, advantages, mask)
    assert_close(plain, torch.tensor((5.0 - 1.2) / 2.0))
    loss, metrics = ppo_clip(logprobs, old_logprobs, advantages, mask, dual_clip=3.0)
    assert_close(loss, torch.tensor((3.0 - 1.2) / 2.0))
    assert_close(metrics["dual_clip_fraction"], torch.tensor(0.5))
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip(logprobs, old_logprobs, advantages, mask, dual_clip=0.5)


def test_ppo_clip_aggregation_modes_by_hand():
    old_logprobs = torch.zeros(2, 2)
    logprobs = torch.zeros(2, 2)  # ratio 1 everywhere: token loss = -A
    advantages = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # token losses -1, -3 | -2: token_mean -6/3 = -2; seq_mean_token_mean mean(-2, -2) = -2
    # seq_mean_token_sum mean(-4, -2) = -3
    assert_close(ppo_clip(logprobs, old_logprobs, advantages, mask)[0], torch.tensor(-2.0))
    seq_mean_loss, _ = ppo_clip(logprobs, old_logprobs, advantages, mask, agg_mode="seq_mean_token_mean")
    assert_close(seq_mean_loss, torch.tensor(-2.0))
    token_sum_loss, _ = ppo_clip(logprobs, old_logprobs, advantages, mask, agg_mode="seq_mean_token_sum")
    assert_close(token_sum_loss, torch.tensor(-3.0))


def test_ppo_clip_ignores_garbage_at_masked_positions_and_keeps_gradients_finite():
    logprobs, old_logprobs, advantages, mask = ppo_case()
    clean_loss, clean_metrics = ppo_clip(logprobs, old_logprobs, advantages, mask)
    pad = torch.tensor([[NAN]])
    dirty_logprobs = torch.cat([logprobs.detach(), pad], dim=1).requires_grad_()
    loss, metrics = ppo_clip(
        dirty_logprobs,
        torch.cat([old_logprobs, torch.tensor([[float("inf")]])], dim=1),
        torch.cat([advantages, pad], dim=1),
        torch.tensor([[1, 1, 1, 0]]),
    )
    assert_close(loss, clean_loss)
    assert_close(metrics["approx_kl"], clean_metrics["approx_kl"])
    loss.backward()
    assert torch.isfinite(dirty_logprobs.grad).all() and dirty_logprobs.grad[0, 3] == 0


def test_ppo_clip_is_registered():
    assert POLICY_LOSSES.lookup("ppo_clip") is ppo_clip


# ----------------------------------------------------------------------------------- value_loss


def test_value_loss_by_hand():
    values = torch.tensor([[1.5, 0.9]], requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0]])
    returns = torch.tensor([[2.0, 0.0]])
    mask = torch.ones(1, 2)
    # t0: unclipped (1.5 - 2)^2 = 0.25; clipped V = 1.0 + 0.2 = 1.2 -> (1.2 - 2)^2 = 0.64; max 0.64
    # t1: move -0.1 is inside the range: both errors 0.9^2 = 0.81
    # loss = 0.5 * mean(0.64, 0.81) = 0.3625; clipped error larger on 1 token of 2
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert_close(loss, torch.tensor(0.3625))
    assert_close(clip_fraction, torch.tensor(0.5))
    # t0's winning term is clipped (no gradient); t1: d/dV 0.5 * (V - R)^2 / 2 = 0.5 * 0.9 = 0.45
    loss.backward()
    assert_close(values.grad, torch.tensor([[0.0, 0.45]]))


def test_value_loss_without_clipping_and_with_padding():
    values = torch.tensor([[1.5, 0.9, NAN]])
    old_values = torch.tensor([[1.0, 1.0, NAN]])
    returns = torch.tensor([[2.0, 0.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    # 0.5 * mean(0.25, 0.81) = 0.265
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip_range=None)
    assert_close(loss, torch.tensor(0.265))
    assert clip_fraction == 0


# -------------------------------------------------------------------------------- entropy_bonus


def test_entropy_bonus_by_hand():
    entropy = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # token mean (1 + 2 + 3)/3 = 2 -> loss term -0.01 * 2 = -0.02
    loss_term, mean_entropy = entropy_bonus(entropy, mask, coef=0.01)
    assert_close(loss_term, torch.tensor(-0.02))
    assert_close(mean_entropy, torch.tensor(2.0))
    # per sequence: mean(1.5, 3) = 2.25 -> -0.0225
    loss_term, _ = entropy_bonus(entropy, mask, coef=0.01, agg_mode="seq_mean_token_mean")
    assert_close(loss_term, torch.tensor(-0.0225))
