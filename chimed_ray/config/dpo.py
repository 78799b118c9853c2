"""Config of offline preference optimisation (DPO, IPO, SimPO, ORPO) on Ray Train."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from chimed_ray.config.loader import check
from chimed_ray.config.train import TrainStageConfig

# Losses that compare the policy with a frozen reference model, on summed answer log-probabilities.
# The others are reference-free and use log-probabilities averaged over answer tokens.
REFERENCE_LOSSES = ("dpo", "ipo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}


@dataclass
class PreferenceAlgorithmConfig:
    """Which preference loss and its coefficients (see `chimed_ray.algorithms.preference_losses`).

    `beta` empty means the loss's usual value: 0.1 for dpo/ipo, 2.0 for simpo; orpo has no beta
    and weighs its odds-ratio term by `orpo_lambda` against the SFT loss on chosen answers.
    """

    loss: Literal["dpo", "ipo", "simpo", "orpo"] = "dpo"
    beta: Optional[float] = None
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1

    def validate(self) -> None:
        check(self.beta is None or self.beta > 0, "beta", f"must be positive, got {self.beta}")
        check(self.beta is None or self.loss != "orpo", "beta", "orpo has no beta; set orpo_lambda")
        check(0.0 <= self.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        check(
            self.label_smoothing == 0.0 or self.loss == "dpo",
            "label_smoothing",
            f"only applies to loss=dpo, got loss={self.loss}",
        )
        check(self.simpo_gamma >= 0, "simpo_gamma", f"must be >= 0, got {self.simpo_gamma}")
        check(self.orpo_lambda > 0, "orpo_lambda", f"must be positive, got {self.orpo_lambda}")

    @property
    def needs_reference(self) -> bool:
        """True for losses on log-ratios against the reference model (dpo, ipo)."""
        return self.loss in REFERENCE_LOSSES

    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments of the registered loss function."""
        if self.loss == "orpo":
            return {"lambda_": self.orpo_lambda}
        options: dict[str, Any] = {"beta": self.beta if self.beta is not None else DEFAULT_BETA[self.loss]}
        if self.loss == "dpo":
            options["label_smoothing"] = self.label_smoothing
        if self.loss == "simpo":
            options["gamma"] = self.simpo_gamma
        return options


@dataclass
class ReferenceConfig:
    """The frozen reference model, scored once before training by a Ray Data actor pool.

    `path` empty means `model.path` (the policy's starting checkpoint). Scores are cached in
    `cache_file` (default `<output_dir>/reference_logps.jsonl`), keyed by example, and reused
    by later runs with the same reference; Ray Train workers read them from there, so on a
    multi-node cluster the file must sit on shared storage, like `model.path`.
    """

    path: str = ""
    cache_file: str = ""
    batch_size: int = 8
    num_actors: int = 0  # 0: as many as scale.num_workers

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.num_actors >= 0, "num_actors", f"must be >= 0 (0: scale.num_workers), got {self.num_actors}")


@dataclass
class DPOConfig(TrainStageConfig):
    """Offline preference optimisation on (prompt, chosen, rejected) pairs in the ChiMed format,
    with log-probabilities taken over answer tokens only."""

    output_dir: str = "outputs/dpo"
    run_name: str = "dpo"
    algorithm: PreferenceAlgorithmConfig = field(default_factory=PreferenceAlgorithmConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def validate(self) -> None:
        super().validate()
        check(
            self.data.format in ("auto", "preference"),
            "data.format",
            f"DPO reads prompt/chosen/rejected pairs: expected auto or preference, got {self.data.format!r}",
        )
