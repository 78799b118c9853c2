"""KL estimators and KL-coefficient controllers, checked on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.algorithms import AdaptiveKLController, FixedKLController, kl_penalty

# log r = logprobs - ref_logprobs = [-1 - (-1.5), -2 - (-1)] = [0.5, -1.0]
LOGPROBS = torch.tensor([[-1.0, -2.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0]])


def test_k1_is_the_log_ratio():
    assert_close(kl_penalty(LOGPROBS, REF_LOGPROBS, "k1"), torch.tensor([[0.5, -1.0]]))


def test_k2_is_half_the_squared_log_ratio():
    # 0.5 * 0.25 = 0.125; 0.5 * 1 = 0.5
    assert_close(kl_penalty(LOGPROBS, REF_LOGPROBS, "k2"), torch.tensor([[0.125, 0.5]]))


def test_k3_by_hand():
    # exp(-0.5) - 1 + 0.5 = 0.60653 - 0.5 = 0.10653;  exp(1) - 1 - 1 = 0.71828
    expected = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]])
    assert_close(kl_penalty(LOGPROBS, REF_LOGPROBS, "k3"), expected)


def test_abs_is_the_absolute_log_ratio():
    assert_close(kl_penalty(LOGPROBS, REF_LOGPROBS, "abs"), torch.tensor([[0.5, 1.0]]))


def test_k3_is_clamped_to_ten_and_never_negative():
    # log r = -30: exp(30) - 1 - 30 is about 1e13, clamped to 10
    clamped = kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "k3")
    assert_close(clamped, torch.tensor([[10.0]]))
    generator = torch.Generator().manual_seed(0)
    logprobs, ref_logprobs = -torch.rand(3, 8, generator=generator) * 5, -torch.rand(3, 8, generator=generator) * 5
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()


def test_kl_is_float32_even_for_bfloat16_inputs():
    assert kl_penalty(LOGPROBS.bfloat16(), REF_LOGPROBS.bfloat16()).dtype == torch.float32


def test_unknown_estimator_names_the_choices():
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(LOGPROBS, REF_LOGPROBS, "low_var")  # type: ignore[arg-type]


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05


def test_adaptive_controller_by_hand():
    controller = AdaptiveKLController(init_kl_coef=0.2, target_kl=6.0, horizon=10000)
    # KL 9 vs target 6: error 9/6 - 1 = 0.5, clipped to 0.2; factor 1 + 0.2 * 256/10000 = 1.00512
    controller.update(current_kl=9.0, n_steps=256)
    assert controller.value == pytest.approx(0.2 * 1.00512)
    # KL 3 vs target 6: error -0.5, clipped to -0.2; factor 1 - 0.2 * 100/10000 = 0.998
    controller.update(current_kl=3.0, n_steps=100)
    assert controller.value == pytest.approx(0.2 * 1.00512 * 0.998)
    # KL 6.6 vs target 6: error 0.1, inside the clip; factor 1 + 0.1 * 1000/10000 = 1.01
    controller.update(current_kl=6.6, n_steps=1000)
    assert controller.value == pytest.approx(0.2 * 1.00512 * 0.998 * 1.01)


def test_adaptive_controller_rejects_bad_horizon():
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=0)


def test_kl_loss_is_k3_aggregated_and_pulls_toward_the_reference():
    from chimed_ray.algorithms import kl_loss

    # row 0: log r = 0 and log 2 -> k3 = 0 and 1/2 - 1 + log 2; row 1: second token is padding (garbage).
    logprobs = torch.tensor([[-1.0, math.log(0.5)], [math.log(0.25), float("nan")]], requires_grad=True)
    reference = torch.tensor([[-1.0, math.log(0.25)], [math.log(0.5), 5.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    k3_half = 0.5 - 1.0 + math.log(2.0)  # log r = log 2
    k3_minus = 2.0 - 1.0 - math.log(2.0)  # log r = -log 2
    kl, logged = kl_loss(logprobs, reference, mask, "token_mean")
    assert_close(kl, torch.tensor((0.0 + k3_half + k3_minus) / 3))
    assert_close(kl_loss(logprobs, reference, mask, "seq_mean_token_mean")[0],
                 torch.tensor(((0.0 + k3_half) / 2 + k3_minus) / 2))
    kl.backward()
    # d k3 / d log r = 1 - exp(-log r): positive above the reference, negative below, 0 on padding.
    assert_close(logprobs.grad, torch.tensor([[0.0, 0.5 / 3], [-1.0 / 3, 0.0]]))
    assert not logged.requires_grad
