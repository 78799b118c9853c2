"""Losses on preference pairs: the reward-model pairwise loss and offline preference optimisation.

Offline losses share one signature,
`fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **options)`, on `[B]`
sequence log-probabilities: summed over response tokens for `dpo`, averaged over them (policy and
reference alike) for the losses in `LENGTH_NORMALISED_LOSSES`: `ipo` (as TRL does), and the
reference-free `simpo` and `orpo` (which ignore the reference arguments; pass None). Each
returns `(loss, metrics)` with detached batch means `chosen_rewards`, `rejected_rewards`,
`reward_margin` and `reward_accuracy`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from chimed_ray.algorithms.registry import Registry

PREFERENCE_LOSSES = Registry("preference loss")
register_preference_loss = PREFERENCE_LOSSES.register

# Losses whose sequence log-probabilities are averaged over the answer's tokens, not summed. IPO's
# target gap 1 / (2 beta) is on a per-token scale: TRL's DPOTrainer divides IPO's summed log-probs
# (policy and reference) by the answer length, and so do we.
LENGTH_NORMALISED_LOSSES = frozenset({"ipo", "simpo", "orpo"})


def preference_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Batch means of the implicit rewards, their margin and how often chosen beats rejected.

    Args:
        chosen_rewards: `[B]` reward of each chosen response.
        rejected_rewards: `[B]` reward of each rejected response.
    """
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "chosen_rewards": chosen_rewards.mean(),
        "rejected_rewards": rejected_rewards.mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }


def pairwise_reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Optional[Union[Tensor, float]] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley-Terry loss for a reward model: mean of -log sigmoid(r_chosen - r_rejected - margin).

    Args:
        chosen_rewards: `[B]` scalar reward of each chosen response.
        rejected_rewards: `[B]` scalar reward of each rejected response.
        margin: Optional `[B]` (or scalar) margin by which chosen should win (Llama 2 style).

    Returns:
        `(loss, metrics)`; metrics as in `preference_metrics` (`reward_accuracy` ignores the margin).
    """
    difference = chosen_rewards.float() - rejected_rewards.float()  # [B]
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference).mean()
    return loss, preference_metrics(chosen_rewards, rejected_rewards)


def _reference_logratios(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor],
    ref_rejected_logps: Optional[Tensor],
    loss_name: str,
) -> tuple[Tensor, Tensor]:
    """`(log pi/pi_ref of chosen [B], log pi/pi_ref of rejected [B])`."""
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"preference loss {loss_name!r} needs reference log-probabilities, got None")
    return chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps


@register_preference_loss("dpo")
def dpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor],
    ref_rejected_logps: Optional[Tensor],
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * h), h = chosen log-ratio - rejected log-ratio.

    With `label_smoothing` = e > 0 this is conservative DPO: the pair is assumed mislabeled with
    probability e, giving -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h).
    Implicit rewards are beta * log(pi / pi_ref).
    """
    chosen_logratio, rejected_logratio = _reference_logratios(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, "dpo"
    )
    logits = beta * (chosen_logratio - rejected_logratio)  # [B]
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), preference_metrics(beta * chosen_logratio, beta * rejected_logratio)


@register_preference_loss("ipo")
def ipo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor],
    ref_rejected_logps: Optional[Tensor],
    *,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO (Azar et al. 2023, eq. 17): (h - 1 / (2 beta))^2, regressing the log-ratio gap to a target.

    All four log-probabilities are averaged over their answer's tokens (see
    `LENGTH_NORMALISED_LOSSES`), so h is a per-token gap and 1 / (2 beta) does not favour long
    answers. Unlike DPO the loss stops pushing once the gap reaches 1 / (2 beta), which resists overfitting
    on near-deterministic preferences. Implicit rewards are beta * log(pi / pi_ref).
    """
    chosen_logratio, rejected_logratio = _reference_logratios(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, "ipo"
    )
    losses = (chosen_logratio - rejected_logratio - 1.0 / (2.0 * beta)).square()  # [B]
    return losses.mean(), preference_metrics(beta * chosen_logratio, beta * rejected_logratio)


@register_preference_loss("simpo")
def simpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor] = None,
    ref_rejected_logps: Optional[Tensor] = None,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO (Meng et al. 2024): -log sigmoid(beta * avg_logp_chosen - beta * avg_logp_rejected - gamma).

    Reference-free: the reward is the length-normalised log-probability scaled by beta, and gamma
    is the target reward margin. `chosen_logps`/`rejected_logps` must be *averaged* over tokens.
    """
    chosen_rewards, rejected_rewards = beta * chosen_logps, beta * rejected_logps  # [B]
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses.mean(), preference_metrics(chosen_rewards, rejected_rewards)


@register_preference_loss("orpo")
def orpo(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor] = None,
    ref_rejected_logps: Optional[Tensor] = None,
    *,
    lambda_: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO's odds-ratio term (Hong et al. 2024): -lambda * log sigmoid(log odds(chosen) - log odds(rejected)).

    odds(y) = P(y) / (1 - P(y)) with log P(y) the *average* token log-probability. Only this term
    is returned; the trainer adds the SFT negative log-likelihood on the chosen responses.
    Rewards are lambda * avg logprob (as in TRL); metrics also hold `log_odds_ratio`.
    """
    # log(1 - P) = log(-expm1(log P)) stays accurate when P is close to 1.
    log_odds_chosen = chosen_logps - torch.log(-torch.expm1(chosen_logps))  # [B]
    log_odds_rejected = rejected_logps - torch.log(-torch.expm1(rejected_logps))  # [B]
    log_odds_ratio = log_odds_chosen - log_odds_rejected  # [B]
    loss = -lambda_ * F.logsigmoid(log_odds_ratio).mean()
    metrics = preference_metrics(lambda_ * chosen_logps, lambda_ * rejected_logps)
    metrics["log_odds_ratio"] = log_odds_ratio.detach().mean()
    return loss, metrics
