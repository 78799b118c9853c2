"""Advantage estimators behind one call: `compute_advantages(name, inputs) -> (advantages, returns)`.

* `gae`: Generalised Advantage Estimation with a critic (Schulman et al. 2016), as in PPO.
* `grpo`: outcome reward normalised within each prompt's group of samples (Shao et al. 2024).
* `rloo`: REINFORCE with a leave-one-out baseline within each group (Ahmadian et al. 2024).
* `reinforce_pp`: REINFORCE++, discounted token rewards whitened over the batch (Hu 2025).
* `reinforce_pp_baseline`: REINFORCE++ after subtracting each group's mean score (OpenRLHF's
  `reinforce_baseline`).

Which estimators whiten over the batch follows verl (`core_algos.py`) and OpenRLHF
(`experience_maker.compute_advantages_and_returns`): GAE and the REINFORCE++ family are whitened;
GRPO and RLOO are normalised within their groups and never whitened again.

Add an estimator with `@register_advantage_estimator("name")` on a function taking an
`AdvantageInputs` and returning `(advantages [B, T], returns [B, T])`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from chimed_ray.algorithms.masks import masked_whiten, zero_masked
from chimed_ray.algorithms.registry import Registry
from chimed_ray.algorithms.rewards import last_token_index

AdvantageEstimator = Callable[["AdvantageInputs"], tuple[Tensor, Tensor]]

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
_NEEDS_CRITIC: set[str] = set()
_NEEDS_GROUPS: set[str] = set()


@dataclass
class AdvantageInputs:
    """Everything any estimator may read; each uses only what it needs.

    Attributes:
        token_rewards: Per-token rewards including the KL penalty (see `token_level_rewards`).
        response_mask: 0/1 mask of response tokens.
        sequence_scores: Reward-model (or verifier) score of each whole response.
        values: Critic values of each response token; required by `gae` only.
        group_ids: Id of the prompt each response answers; responses to the same prompt form a
            group. Required by `grpo` and `rloo`.
        gamma: Discount factor.
        lam: GAE lambda.
        norm_by_std: `grpo` divides by the group std; False gives Dr. GRPO (mean-centering only).
        epsilon: Added to the group std before dividing.
        whiten: Whiten `gae` and REINFORCE++ advantages over the batch (verl and OpenRLHF both
            do). `grpo` and `rloo` ignore it: their group normalisation is the whole story.
    """

    token_rewards: Tensor  # [B, T]
    response_mask: Tensor  # [B, T]
    sequence_scores: Tensor  # [B]
    values: Optional[Tensor] = None  # [B, T]
    group_ids: Optional[Tensor] = None  # [B]
    gamma: float = 1.0
    lam: float = 0.95
    norm_by_std: bool = True
    epsilon: float = 1e-6
    whiten: bool = True

    def __post_init__(self) -> None:
        shape = tuple(self.token_rewards.shape)
        if len(shape) != 2:
            raise ValueError(f"AdvantageInputs.token_rewards: expected shape [B, T], got {list(shape)}")
        expected = {"response_mask": shape, "values": shape, "sequence_scores": shape[:1], "group_ids": shape[:1]}
        for name, want in expected.items():
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape) != want:
                raise ValueError(f"AdvantageInputs.{name}: expected shape {list(want)}, got {list(tensor.shape)}")


def register_advantage_estimator(
    name: str, needs_critic: bool = False, needs_groups: bool = False
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator adding an estimator to `ADVANTAGE_ESTIMATORS`.

    Args:
        name: Name used in configs, e.g. `algorithm.advantage_estimator=grpo`.
        needs_critic: Whether the estimator reads `AdvantageInputs.values`.
        needs_groups: Whether it compares answers to the same prompt (needs >= 2 samples per prompt).
    """
    register = ADVANTAGE_ESTIMATORS.register(name)

    def decorator(function: AdvantageEstimator) -> AdvantageEstimator:
        if needs_critic:
            _NEEDS_CRITIC.add(name)
        if needs_groups:
            _NEEDS_GROUPS.add(name)
        return register(function)

    return decorator


def compute_advantages(name: str, inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Run the estimator registered under `name`, without tracking gradients.

    Returns:
        `(advantages [B, T], returns [B, T])`, both 0 outside the response mask.
    """
    estimator = ADVANTAGE_ESTIMATORS.lookup(name)
    with torch.no_grad():
        return estimator(inputs)


def estimator_needs_critic(name: str) -> bool:
    """Whether the estimator `name` needs a critic (value model); only `gae` does."""
    ADVANTAGE_ESTIMATORS.lookup(name)
    return name in _NEEDS_CRITIC


def estimator_needs_groups(name: str) -> bool:
    """Whether the estimator `name` compares several answers to one prompt (grpo, rloo, ...)."""
    ADVANTAGE_ESTIMATORS.lookup(name)
    return name in _NEEDS_GROUPS


def _float_mask(inputs: AdvantageInputs) -> Tensor:
    return (inputs.response_mask != 0).float()  # [B, T]


def _require(inputs: AdvantageInputs, field_name: str, estimator: str) -> Tensor:
    tensor = getattr(inputs, field_name)
    if tensor is None:
        raise ValueError(f"advantage estimator {estimator!r} needs AdvantageInputs.{field_name}, got None")
    return tensor


@register_advantage_estimator("gae", needs_critic=True)
def gae(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation.

    Walking backwards, delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}.
    Masked positions are skipped, not treated as episode ends: the next valid token's value and
    advantage carry across them, so tool or user tokens inside a multi-turn response are
    transparent. Returns are A + V before whitening.
    """
    mask = _float_mask(inputs)  # [B, T]
    values = zero_masked(_require(inputs, "values", "gae").float(), mask)  # [B, T]
    rewards = zero_masked(inputs.token_rewards.float(), mask)  # [B, T]
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    next_advantage = torch.zeros_like(rewards[:, 0])  # [B]
    advantages = torch.zeros_like(rewards)  # [B, T]
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t] > 0
        delta = rewards[:, t] + inputs.gamma * next_value - values[:, t]
        advantage = delta + inputs.gamma * inputs.lam * next_advantage
        next_value = torch.where(valid, values[:, t], next_value)
        next_advantage = torch.where(valid, advantage, next_advantage)
        advantages[:, t] = next_advantage
    advantages = advantages * mask
    returns = advantages + values
    if inputs.whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


def _group_index(inputs: AdvantageInputs, estimator: str) -> tuple[Tensor, Tensor, Tensor]:
    """Map each sample to its group: `(group_of_sample [B], group_size [B], group_score_sum [B])`."""
    group_ids = _require(inputs, "group_ids", estimator)
    _, group_of_sample = torch.unique(group_ids, return_inverse=True)  # [B] in 0..G-1
    scores = inputs.sequence_scores.float()  # [B]
    num_groups = int(group_of_sample.max()) + 1 if group_of_sample.numel() else 0
    counts = torch.bincount(group_of_sample, minlength=num_groups).float()  # [G]
    sums = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add(0, group_of_sample, scores)
    return group_of_sample, counts[group_of_sample], sums[group_of_sample]


@register_advantage_estimator("grpo", needs_groups=True)
def grpo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Group-relative outcome advantage: (score - group mean) / (group std + epsilon).

    With `norm_by_std=False` it is Dr. GRPO's score - group mean (Liu et al. 2025). Never
    whitened over the batch (verl's `compute_grpo_outcome_advantage`, OpenRLHF's `group_norm`).
    The std is the unbiased one (as `torch.std`, matching verl). A group of one has no peer to
    compare with, so its advantage is 0. The scalar is broadcast over the response tokens, and
    the returns equal the advantages.
    """
    group_of_sample, group_size, group_sum = _group_index(inputs, "grpo")
    scores = inputs.sequence_scores.float()  # [B]
    centered = scores - group_sum / group_size  # [B]
    if inputs.norm_by_std:
        squares = torch.zeros_like(scores).index_add(0, group_of_sample, centered.square())[group_of_sample]
        std = torch.sqrt(squares / (group_size - 1).clamp(min=1))  # [B]
        centered = centered / (std + inputs.epsilon)
    advantages = centered.unsqueeze(1) * _float_mask(inputs)  # [B, T]
    return advantages, advantages.clone()


@register_advantage_estimator("rloo", needs_groups=True)
def rloo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Leave-one-out advantage: score minus the mean score of the *other* samples in the group.

    A group of one has no other sample, so its advantage is 0. Broadcast over response tokens;
    the returns equal the advantages.
    """
    _, group_size, group_sum = _group_index(inputs, "rloo")
    scores = inputs.sequence_scores.float()  # [B]
    others_mean = (group_sum - scores) / (group_size - 1).clamp(min=1)  # [B]
    advantage = torch.where(group_size > 1, scores - others_mean, torch.zeros_like(scores))  # [B]
    advantages = advantage.unsqueeze(1) * _float_mask(inputs)  # [B, T]
    return advantages, advantages.clone()


@register_advantage_estimator("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++: discounted returns G_t = r_t + gamma * G_{t+1}, whitened over the whole batch
    (unless `whiten=False`).

    `token_rewards` should already carry the per-token KL penalty. As in `gae`, masked positions
    are skipped rather than ending the episode. Returns are the raw discounted returns.
    """
    mask = _float_mask(inputs)  # [B, T]
    rewards = zero_masked(inputs.token_rewards.float(), mask)  # [B, T]
    running = torch.zeros_like(rewards[:, 0])  # [B]
    returns = torch.zeros_like(rewards)  # [B, T]
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t] > 0, rewards[:, t] + inputs.gamma * running, running)
        returns[:, t] = running
    returns = returns * mask
    return (masked_whiten(returns, mask) if inputs.whiten else returns.clone()), returns


@register_advantage_estimator("reinforce_pp_baseline", needs_groups=True)
def reinforce_pp_baseline(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline: each answer's last-token reward minus its group's mean score, then
    `reinforce_pp` (OpenRLHF's `reinforce_baseline`). The group mean removes how hard the prompt
    is; the batch whitening, not a group std, sets the scale, which is steadier than GRPO when a
    group's scores barely differ.
    """
    _, group_size, group_sum = _group_index(inputs, "reinforce_pp_baseline")
    mask = _float_mask(inputs)  # [B, T]
    has_tokens = mask.sum(dim=1) > 0  # [B]
    baseline = torch.where(has_tokens, group_sum / group_size, torch.zeros_like(group_sum))  # [B]
    last = last_token_index(mask).unsqueeze(1)  # [B, 1]
    rewards = zero_masked(inputs.token_rewards.float(), mask).scatter_add(1, last, -baseline.unsqueeze(1))
    return reinforce_pp(replace(inputs, token_rewards=rewards))
