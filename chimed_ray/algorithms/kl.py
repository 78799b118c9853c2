"""Per-token KL estimators between the policy and the reference model, and KL-coefficient controllers.

The estimators are Schulman's k1/k2/k3 (http://joschu.net/blog/kl-approx.html), written in terms of
log r = logprobs - ref_logprobs for tokens sampled from the policy. k3 is verl's `low_var_kl`.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3", "abs"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) for tokens sampled from the policy.

    With log r = logprobs - ref_logprobs:

    * `k1`: log r (unbiased, can be negative per token);
    * `k2`: 0.5 * (log r)^2 (low variance, biased);
    * `k3`: exp(-log r) - 1 + log r (unbiased and non-negative; clamped to [-10, 10]);
    * `abs`: |log r|.

    Args:
        logprobs: `[B, T]` log-probabilities of the sampled tokens under the policy.
        ref_logprobs: `[B, T]` log-probabilities of the same tokens under the reference model.
        estimator: One of `KL_ESTIMATORS`.

    Returns:
        `[B, T]` float32 per-token KL estimates (masking is left to the caller).
    """
    log_ratio = logprobs.float() - ref_logprobs.float()  # [B, T]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # Clamp before exp so a token the reference finds impossible cannot overflow to inf.
        log_ratio = log_ratio.clamp(min=-20.0, max=20.0)
        return (torch.exp(-log_ratio) - 1.0 + log_ratio).clamp(min=-10.0, max=10.0)
    if estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {list(KL_ESTIMATORS)}")


class KLController(Protocol):
    """Holds the current KL coefficient `value` and adjusts it after each rollout."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust `value` given the KL measured over the last `n_steps` samples."""


class FixedKLController:
    """A KL coefficient that never changes.

    Args:
        kl_coef: The coefficient.
    """

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards a target (Ziegler et al. 2019, sec. 2.2).

    Each update multiplies the coefficient by 1 + e * n_steps / horizon, where
    e = clip(current_kl / target_kl - 1, -0.2, 0.2): the coefficient grows when the policy drifts
    too far from the reference and shrinks when it stays too close.

    Args:
        init_kl_coef: Starting coefficient.
        target_kl: KL the controller aims for.
        horizon: Number of samples over which a full 20% error is corrected.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target_kl <= 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale the coefficient by the clipped proportional error.

        Args:
            current_kl: Mean KL measured on the latest rollout.
            n_steps: Number of samples in that rollout.
        """
        proportional_error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
