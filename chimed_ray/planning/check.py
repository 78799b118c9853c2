"""The memory check every stage runs on the driver before it starts any actor.

On GPU a config whose plan does not fit `scale.gpu_memory_gb` is refused with one line naming the
peak, the budget and a verified fix; `scale.memory_check=false` skips the check. On CPU the check
is skipped: the figures would be host RAM per worker, and a CPU run's workers share one machine's
RAM with everything else on it, so no per-worker budget exists to hold them against.
"""

from __future__ import annotations

from typing import Any

from chimed_ray.config.loader import ConfigError
from chimed_ray.planning.advice import advise
from chimed_ray.planning.plan import MemoryPlan
from chimed_ray.planning.report import refusal
from chimed_ray.planning.stages import PLANNED_STAGES, stage_plan


def budget_scale(stage: str, config: Any) -> Any:
    """The scale section holding `gpu_memory_gb` and `memory_check` for `stage`."""
    return config.sft.scale if stage == "rejection-sampling" else config.scale


def budget_key(stage: str) -> str:
    return ("sft." if stage == "rejection-sampling" else "") + "scale.gpu_memory_gb"


def plan_and_advice(stage: str, config: Any) -> tuple[MemoryPlan, list[str]]:
    """The plan of `config` and, if it does not fit, the verified changes that would make it fit."""
    plan = stage_plan(stage, config)
    return plan, advise(stage, config, plan, lambda candidate: stage_plan(stage, candidate))


def uses_gpu(stage: str, config: Any) -> bool:
    """Whether any of the stage's workers hold a GPU."""
    if stage == "rejection-sampling":
        return config.sft.scale.use_gpu or config.inference.gpus_per_actor > 0
    return config.scale.use_gpu


def check_memory(stage: str, config: Any) -> None:
    """Raise ConfigError (one line) if `config` runs on GPUs and its memory plan does not fit."""
    if stage not in PLANNED_STAGES or not uses_gpu(stage, config) or not budget_scale(stage, config).memory_check:
        return
    plan = stage_plan(stage, config)
    if plan.fits:
        return
    _, advice = plan_and_advice(stage, config)
    raise ConfigError(refusal(plan, advice, budget_key(stage)))
