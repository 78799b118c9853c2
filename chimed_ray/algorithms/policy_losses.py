"""Policy-gradient losses for PPO-style updates, the clipped value loss, the entropy bonus and
GRPO's KL-to-reference term.

A policy loss takes `(logprobs, old_logprobs, advantages, response_mask)` as `[B, T]` tensors plus
keyword-only options, and returns `(loss, metrics)`. Register new ones with
`@register_policy_loss("name")`.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from chimed_ray.algorithms.kl import kl_penalty
from chimed_ray.algorithms.masks import masked_mean, masked_sum, zero_masked
from chimed_ray.algorithms.registry import Registry

AggMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
AGG_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")

POLICY_LOSSES = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def agg_loss(loss_mat: Tensor, mask: Tensor, agg_mode: AggMode = "token_mean") -> Tensor:
    """Reduce a per-token loss to a scalar.

    * `token_mean`: mean over all valid tokens of the batch (long answers weigh more, as in DAPO);
    * `seq_mean_token_mean`: mean per sequence, then mean over sequences (every answer weighs the same);
    * `seq_mean_token_sum`: sum per sequence, then mean over sequences (Dr. GRPO-like, no length normaliser).

    Args:
        loss_mat: `[B, T]` per-token loss.
        mask: `[B, T]` 0/1 mask of tokens that count.
        agg_mode: One of `AGG_MODES`.
    """
    if agg_mode == "token_mean":
        return masked_mean(loss_mat, mask)
    if agg_mode == "seq_mean_token_mean":
        return masked_mean(loss_mat, mask, dim=-1).mean()
    if agg_mode == "seq_mean_token_sum":
        return masked_sum(loss_mat, mask, dim=-1).mean()
    raise ValueError(f"unknown loss aggregation mode {agg_mode!r}; expected one of {list(AGG_MODES)}")


@register_policy_loss("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    agg_mode: AggMode = "token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A), r = pi / pi_old.

    A larger `clip_eps_high` than `clip_eps_low` is DAPO's "clip-higher", which leaves room for
    unlikely tokens to gain probability. `dual_clip` = c > 1 caps the loss of negative-advantage
    tokens at -c * A, so one token whose ratio exploded cannot dominate (Ye et al. 2020).

    Args:
        logprobs: `[B, T]` log-probabilities under the policy being trained.
        old_logprobs: `[B, T]` log-probabilities under the policy that generated the samples.
        advantages: `[B, T]`.
        response_mask: `[B, T]` 0/1 mask of tokens that count.
        clip_eps_low: Lower clip range.
        clip_eps_high: Upper clip range; defaults to `clip_eps_low`.
        dual_clip: Dual-clip constant c (> 1), or None to disable.
        agg_mode: See `agg_loss`.

    Returns:
        `(loss, metrics)`; metrics (detached scalars): `clip_fraction` (share of tokens where the
        clipped term was chosen), `approx_kl` (mean of old - new logprob), and
        `dual_clip_fraction` when dual clip is on.
    """
    if clip_eps_high is None:
        clip_eps_high = clip_eps_low
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    # Zero padding first (ratio 1, advantage 0) so garbage there cannot turn gradients into NaN,
    # and clamp the log-ratio so a stale or numerically broken token cannot overflow exp.
    advantages = zero_masked(advantages, response_mask)  # [B, T]
    log_ratio = zero_masked(logprobs - old_logprobs, response_mask).clamp(min=-20.0, max=20.0)  # [B, T]
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    token_loss = torch.maximum(unclipped_loss, clipped_loss)  # [B, T]
    metrics = {
        "clip_fraction": masked_mean((clipped_loss > unclipped_loss).float(), response_mask).detach(),
        "approx_kl": masked_mean(-log_ratio, response_mask).detach(),
    }
    if dual_clip is not None:
        capped_loss = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (token_loss > capped_loss)
        token_loss = torch.where(advantages < 0, torch.minimum(token_loss, capped_loss), token_loss)
        metrics["dual_clip_fraction"] = masked_mean(dual_clipped.float(), response_mask).detach()
    return agg_loss(token_loss, response_mask, agg_mode), metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: Optional[float] = 0.2,
    agg_mode: AggMode = "token_mean",
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-clip_range).

    Args:
        values: `[B, T]` critic predictions being trained.
        old_values: `[B, T]` critic predictions at rollout time.
        returns: `[B, T]` targets from the advantage estimator.
        mask: `[B, T]` 0/1 mask of tokens that count.
        clip_range: Largest move of a prediction away from `old_values`; None disables clipping.
        agg_mode: See `agg_loss`.

    Returns:
        `(loss, clip_fraction)`; `clip_fraction` (detached) is the share of tokens where the clipped
        error was the larger one.
    """
    # Zero padding first so garbage there cannot turn gradients into NaN.
    values, old_values, returns = (zero_masked(tensor, mask) for tensor in (values, old_values, returns))
    unclipped_error = (values - returns).square()  # [B, T]
    if clip_range is None:
        return 0.5 * agg_loss(unclipped_error, mask, agg_mode), torch.zeros((), device=values.device)
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    clipped_error = (clipped_values - returns).square()  # [B, T]
    loss = 0.5 * agg_loss(torch.maximum(unclipped_error, clipped_error), mask, agg_mode)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask).detach()
    return loss, clip_fraction


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    coef: float,
    agg_mode: AggMode = "token_mean",
) -> tuple[Tensor, Tensor]:
    """Loss term rewarding policy entropy: add `-coef * mean_entropy` to the loss.

    Args:
        entropy: `[B, T]` per-token entropy (see `entropy_from_logits`).
        mask: `[B, T]` 0/1 mask of tokens that count.
        coef: Entropy coefficient (0 disables the bonus but still reports the entropy).
        agg_mode: See `agg_loss`.

    Returns:
        `(loss_term, mean_entropy)`; `mean_entropy` is detached, for logging.
    """
    mean_entropy = agg_loss(entropy, mask, agg_mode)
    return -coef * mean_entropy, mean_entropy.detach()


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    agg_mode: AggMode = "token_mean",
) -> tuple[Tensor, Tensor]:
    """GRPO's KL term for the policy loss: k3 between policy and reference, aggregated like the
    policy loss (Shao et al. 2024, eq. 3; verl's `use_kl_loss` with `low_var_kl`).

    k3 is non-negative and low-variance. Differentiated as a loss on tokens sampled from pi, its
    gradient (1 - pi_ref / pi) * grad log pi is, in expectation, the gradient of KL(pi_ref || pi): each
    token's log-prob is pulled toward the reference's, while the reward stays free of KL. The
    caller multiplies by its `kl_coef` and adds the result to the loss.

    Args:
        logprobs: `[B, T]` log-probabilities under the policy being trained (with grad).
        ref_logprobs: `[B, T]` log-probabilities of the same tokens under the reference.
        response_mask: `[B, T]` 0/1 mask of tokens that count.
        agg_mode: See `agg_loss`.

    Returns:
        `(kl, kl_detached)`: the aggregated k3 and a detached copy for logging.
    """
    # Zero both sides on padding first so garbage there yields k3 = 0 (and no NaN gradient).
    per_token = kl_penalty(zero_masked(logprobs, response_mask), zero_masked(ref_logprobs, response_mask), "k3")
    kl = agg_loss(per_token, response_mask, agg_mode)
    return kl, kl.detach()
