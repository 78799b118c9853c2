"""Advantage estimators (GAE, GRPO, RLOO, REINFORCE++ and its baseline variant) and their registry,
on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    estimator_needs_critic,
    estimator_needs_groups,
    masked_mean,
    masked_whiten,
    register_advantage_estimator,
)

NAN = float("nan")


def outcome_inputs(scores: list[float], group_ids: list[int], length: int = 2, **options) -> AdvantageInputs:
    """Inputs for the outcome-only estimators: all tokens valid, rewards unused."""
    batch = len(scores)
    return AdvantageInputs(
        token_rewards=torch.zeros(batch, length),
        response_mask=torch.ones(batch, length, dtype=torch.long),
        sequence_scores=torch.tensor(scores),
        group_ids=torch.tensor(group_ids),
        **options,
    )


# ----------------------------------------------------------------------------------------- gae


def test_gae_1x3_by_hand():
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[0.0, 0.0, 1.0]]),
        response_mask=torch.ones(1, 3),
        sequence_scores=torch.tensor([1.0]),
        values=torch.tensor([[0.5, 0.6, 0.7]]),
        gamma=0.9,
        lam=0.8,
        whiten=False,
    )
    # gamma * lam = 0.72; walk backwards with V_3 = 0, A_3 = 0
    # t=2: delta = 1 + 0.9*0   - 0.7 = 0.3;   A_2 = 0.3
    # t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03;  A_1 = 0.03 + 0.72*0.3   = 0.246
    # t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04;  A_0 = 0.04 + 0.72*0.246 = 0.21712
    # returns = A + V = 0.71712, 0.846, 1.0
    advantages, returns = compute_advantages("gae", inputs)
    assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3]]))
    assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_trailing_padding_with_garbage_changes_nothing():
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[0.0, 0.0, 1.0, NAN]]),
        response_mask=torch.tensor([[1, 1, 1, 0]]),
        sequence_scores=torch.tensor([1.0]),
        values=torch.tensor([[0.5, 0.6, 0.7, 99.0]]),
        gamma=0.9,
        lam=0.8,
        whiten=False,
    )
    # same as the 1x3 case; the padded slot is 0 in both outputs
    advantages, returns = compute_advantages("gae", inputs)
    assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3, 0.0]]))
    assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0, 0.0]]))


def test_gae_skips_masked_tokens_inside_a_response():
    # t=1 is, say, a tool output inside a multi-turn answer: not an action of the policy
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[0.0, 7.0, 1.0]]),
        response_mask=torch.tensor([[1, 0, 1]]),
        sequence_scores=torch.tensor([1.0]),
        values=torch.tensor([[0.5, 99.0, 0.7]]),
        gamma=0.9,
        lam=0.8,
        whiten=False,
    )
    # t=2: A_2 = 1 - 0.7 = 0.3; t=1 skipped (V and A carry over from t=2)
    # t=0: delta = 0 + 0.9*0.7 - 0.5 = 0.13; A_0 = 0.13 + 0.72*0.3 = 0.346; return 0.346 + 0.5 = 0.846
    advantages, returns = compute_advantages("gae", inputs)
    assert_close(advantages, torch.tensor([[0.346, 0.0, 0.3]]))
    assert_close(returns, torch.tensor([[0.846, 0.0, 1.0]]))


def test_gae_whitens_advantages_but_not_returns_by_default():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    common = dict(token_rewards=rewards, response_mask=mask, sequence_scores=torch.zeros(2), values=values)
    raw_advantages, raw_returns = compute_advantages("gae", AdvantageInputs(**common, whiten=False))
    advantages, returns = compute_advantages("gae", AdvantageInputs(**common))
    assert_close(advantages, masked_whiten(raw_advantages, mask))
    assert_close(returns, raw_returns)


def test_gae_without_values_names_the_missing_field():
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", outcome_inputs([1.0], [0]))


# ---------------------------------------------------------------------------------------- grpo


def test_grpo_by_hand_with_interleaved_groups():
    inputs = outcome_inputs([1.0, 2.0, 0.0, 0.0, 4.0, 1.0], [0, 1, 0, 0, 1, 0], epsilon=0.0)
    # group 0 = [1, 0, 0, 1]: mean 0.5, unbiased var (4 * 0.25)/3 = 1/3 -> std 1/sqrt(3)
    #   advantages +-0.5 * sqrt(3) = +-0.8660
    # group 1 = [2, 4]: mean 3, unbiased var (1 + 1)/1 = 2 -> std sqrt(2); advantages -+1/sqrt(2)
    half_root3, inv_root2 = 0.5 * math.sqrt(3.0), 1.0 / math.sqrt(2.0)
    expected = torch.tensor([half_root3, -inv_root2, -half_root3, -half_root3, inv_root2, half_root3])
    advantages, returns = compute_advantages("grpo", inputs)
    assert_close(advantages, expected.unsqueeze(1).expand(6, 2))
    assert_close(returns, advantages)


def test_grpo_without_std_is_mean_centering_only():
    inputs = outcome_inputs([1.0, 2.0, 0.0, 0.0, 4.0, 1.0], [0, 1, 0, 0, 1, 0], norm_by_std=False)
    # group means 0.5 and 3
    expected = torch.tensor([0.5, -1.0, -0.5, -0.5, 1.0, 0.5])
    advantages, _ = compute_advantages("grpo", inputs)
    assert_close(advantages[:, 0], expected)


def test_grpo_broadcasts_over_response_tokens_only():
    inputs = AdvantageInputs(
        token_rewards=torch.zeros(2, 3),
        response_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]),
        sequence_scores=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([5, 5]),
        epsilon=0.0,
    )
    # mean 0.5, unbiased std sqrt(0.5) -> +-0.5/sqrt(0.5) = +-sqrt(0.5)
    root_half = math.sqrt(0.5)
    advantages, _ = compute_advantages("grpo", inputs)
    assert_close(advantages, torch.tensor([[root_half, root_half, 0.0], [-root_half, 0.0, 0.0]]))


def test_grpo_identical_rewards_and_singleton_groups_give_zeros():
    inputs = outcome_inputs([0.7, 0.7, 0.7, 3.0], [1, 1, 1, 2])
    advantages, _ = compute_advantages("grpo", inputs)
    assert_close(advantages, torch.zeros(4, 2))


def test_grpo_without_group_ids_names_the_missing_field():
    inputs = AdvantageInputs(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("grpo", inputs)


# ---------------------------------------------------------------------------------------- rloo


def test_rloo_by_hand():
    inputs = outcome_inputs([1.0, 3.0, 2.0, 5.0, 6.0], [0, 7, 0, 7, 0])
    # group 0 = [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> -3, -1.5, 4.5
    # group 7 = [3, 5]: baselines 5 and 3 -> -2, 2
    advantages, returns = compute_advantages("rloo", inputs)
    assert_close(advantages[:, 0], torch.tensor([-3.0, -2.0, -1.5, 2.0, 4.5]))
    assert_close(advantages[:, 1], advantages[:, 0])
    assert_close(returns, advantages)


def test_rloo_baseline_excludes_self():
    base, _ = compute_advantages("rloo", outcome_inputs([1.0, 2.0, 6.0], [0, 0, 0]))
    bumped, _ = compute_advantages("rloo", outcome_inputs([11.0, 2.0, 6.0], [0, 0, 0]))
    # raising r_0 by 10 leaves its own baseline alone (+10 to A_0) and raises the others' by 10/2
    assert_close(bumped[:, 0] - base[:, 0], torch.tensor([10.0, -5.0, -5.0]))
    # equivalently A_i = n/(n-1) * (r_i - group mean): 1.5 * ([1, 2, 6] - 3)
    assert_close(base[:, 0], 1.5 * torch.tensor([-2.0, -1.0, 3.0]))


def test_rloo_singleton_group_gives_zero():
    advantages, _ = compute_advantages("rloo", outcome_inputs([4.0, 1.0, 3.0], [0, 1, 1]))
    assert_close(advantages[:, 0], torch.tensor([0.0, -2.0, 2.0]))


# -------------------------------------------------------------------------------- reinforce_pp


def test_reinforce_pp_by_hand():
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]]),
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        sequence_scores=torch.zeros(2),
        gamma=0.5,
    )
    # row 0: G_2 = 1, G_1 = 0 + 0.5*1 = 0.5, G_0 = 0 + 0.5*0.5 = 0.25
    # row 1 (t=2 padded, its 9 ignored): G_1 = 2, G_0 = 0.5 + 0.5*2 = 1.5
    advantages, returns = compute_advantages("reinforce_pp", inputs)
    assert_close(returns, torch.tensor([[0.25, 0.5, 1.0], [1.5, 2.0, 0.0]]))
    # whiten the 5 valid returns [0.25, 0.5, 1, 1.5, 2]: mean 5.25/5 = 1.05
    # deviations -0.8, -0.55, -0.05, 0.45, 0.95; squares sum 0.64+0.3025+0.0025+0.2025+0.9025 = 2.05
    # unbiased var 2.05/4 = 0.5125
    std = math.sqrt(0.5125)
    expected = torch.tensor([[-0.8, -0.55, -0.05], [0.45, 0.95, 0.0]]) / std
    assert_close(advantages, expected)


def test_reinforce_pp_includes_the_kl_in_token_rewards_and_skips_inner_masked_tokens():
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[-0.1, NAN, 1.9]]),  # -0.1 and -0.1 KL; the last also has score 2
        response_mask=torch.tensor([[1, 0, 1]]),
        sequence_scores=torch.tensor([2.0]),
        gamma=0.5,
    )
    # G_2 = 1.9; t=1 skipped; G_0 = -0.1 + 0.5*1.9 = 0.85
    _, returns = compute_advantages("reinforce_pp", inputs)
    assert_close(returns, torch.tensor([[0.85, 0.0, 1.9]]))


def test_reinforce_pp_advantages_are_whitened_over_the_batch():
    generator = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    inputs = AdvantageInputs(torch.randn(3, 4, generator=generator), mask, torch.zeros(3), gamma=0.9)
    advantages, _ = compute_advantages("reinforce_pp", inputs)
    assert_close(masked_mean(advantages, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    # 9 valid tokens: unbiased variance = mean of squares * 9/8
    assert_close(masked_mean(advantages.square(), mask) * 9 / 8, torch.tensor(1.0), atol=1e-5, rtol=0)
    assert (advantages[mask == 0] == 0).all()


def test_reinforce_pp_without_whitening_returns_the_discounted_returns():
    inputs = AdvantageInputs(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1, 1], [1, 0]]), torch.zeros(2),
                             gamma=0.5, whiten=False)
    advantages, returns = compute_advantages("reinforce_pp", inputs)
    assert_close(advantages, torch.tensor([[0.5, 1.0], [2.0, 0.0]]))
    assert_close(returns, advantages)


def test_reinforce_pp_baseline_by_hand():
    inputs = AdvantageInputs(
        token_rewards=torch.tensor([[-0.1, 2.9], [0.0, 1.0], [4.0, 0.0]]),  # scores 3, 1, 4 on the last tokens
        response_mask=torch.tensor([[1, 1], [1, 1], [1, 0]]),
        sequence_scores=torch.tensor([2.8, 1.0, 4.0]),  # KL-regularised returns: 3 - 0.1 - 0.1, 1, 4
        group_ids=torch.tensor([0, 0, 9]),
        whiten=False,
    )
    # group 0 mean (2.8 + 1) / 2 = 1.9 comes off each last token: row 0 [-0.1, 1.0], row 1 [0, -0.9];
    # group 9 is alone: 4 - 4 = 0. gamma 1 -> returns row 0 [0.9, 1.0], row 1 [-0.9, -0.9], row 2 [0].
    advantages, returns = compute_advantages("reinforce_pp_baseline", inputs)
    expected = torch.tensor([[0.9, 1.0], [-0.9, -0.9], [0.0, 0.0]])
    assert_close(advantages, expected)
    assert_close(returns, expected)
    whitened, _ = compute_advantages("reinforce_pp_baseline", AdvantageInputs(**{**inputs.__dict__, "whiten": True}))
    assert_close(whitened, masked_whiten(expected, inputs.response_mask))


# -------------------------------------------------------------- which estimators are whitened


def test_group_estimators_are_never_whitened_over_the_batch():
    # verl's compute_grpo_outcome_advantage and OpenRLHF's group_norm/rloo stop at the group
    # normalisation; whitening again would rescale every group by the batch's spread.
    scores, groups = [1.0, 3.0, 2.0, 10.0, 6.0, 10.0], [0, 0, 0, 1, 1, 1]
    for name in ("grpo", "rloo"):
        plain, _ = compute_advantages(name, outcome_inputs(scores, groups, whiten=False))
        asked, _ = compute_advantages(name, outcome_inputs(scores, groups, whiten=True))
        assert_close(asked, plain)
        assert not torch.allclose(asked, masked_whiten(plain, torch.ones_like(plain)))
    rloo_advantages, _ = compute_advantages("rloo", outcome_inputs(scores, groups, whiten=True))
    # group 0 mean 2 -> 1.5 * [-1, 1, 0]; group 1 mean 26/3 -> 1.5 * [4/3, -8/3, 4/3]
    assert_close(rloo_advantages[:, 0], torch.tensor([-1.5, 1.5, 0.0, 2.0, -4.0, 2.0]))


# ------------------------------------------------------------------------------------ registry


def test_group_estimators_need_several_samples_per_prompt():
    assert all(estimator_needs_groups(name) for name in ("grpo", "rloo", "reinforce_pp_baseline"))
    assert not any(estimator_needs_groups(name) for name in ("gae", "reinforce_pp"))


def test_only_gae_needs_a_critic():
    assert estimator_needs_critic("gae")
    assert not any(estimator_needs_critic(name) for name in ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"))
    with pytest.raises(ValueError, match="grpo"):
        estimator_needs_critic("ppo")


def test_unknown_estimator_lists_the_known_ones():
    with pytest.raises(ValueError, match="reinforce_pp"):
        compute_advantages("remax", outcome_inputs([1.0], [0]))


def test_registering_a_custom_estimator():
    @register_advantage_estimator("test_raw_score")
    def raw_score(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        scores = inputs.sequence_scores.unsqueeze(1) * inputs.response_mask
        return scores, scores

    try:
        advantages, _ = compute_advantages("test_raw_score", outcome_inputs([2.0, -1.0], [0, 0], length=1))
        assert_close(advantages, torch.tensor([[2.0], [-1.0]]))
        assert not estimator_needs_critic("test_raw_score")
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("test_raw_score")(lambda inputs: inputs)
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_raw_score")


def test_inputs_with_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"response_mask: expected shape \[2, 3\], got \[2, 4\]"):
        AdvantageInputs(torch.zeros(2, 3), torch.ones(2, 4), torch.zeros(2))


def test_compute_advantages_does_not_track_gradients():
    values = torch.tensor([[0.5, 0.6]], requires_grad=True)
    inputs = AdvantageInputs(torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), torch.ones(1), values=values)
    advantages, returns = compute_advantages("gae", inputs)
    assert not advantages.requires_grad and not returns.requires_grad
