"""The smallest change that makes a config fit: candidate `key=value` changes, each re-planned on a
copy of the config, and only the ones whose plan fits are advised.

Every candidate has a cost: knobs that only trade some speed for memory (gradient checkpointing,
smaller micro-, generation- and forward-batches, offloading idle colocated models, a larger vLLM
share) cost least, then ZeRO-3, then more GPUs (more for a larger factor), splitting colocated
roles, and last CPU offload (slowest). Single changes and pairs are tried in order of total cost;
the cheapest few that fit are advised. If none does, the greedy combination that lowers the peak
most at each step is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from chimed_ray.config.loader import ConfigError, validate_tree
from chimed_ray.planning.plan import MemoryPlan, gib

MAX_ADVICE = 3
MAX_COMBINED_STEPS = 5
WORKER_FACTORS = (2, 4, 8, 16)  # more GPUs for a trained role: x2 ... x16
# What a change costs the run (lower is cheaper); see the module docstring.
COST_KNOB, COST_ZERO3, COST_GPUS, COST_SPLIT, COST_OFFLOAD = 1.0, 2.0, 3.0, 6.0, 8.0


@dataclass(frozen=True)
class Change:
    """Overrides (dotted key -> value) applied together, and what they cost the run."""

    overrides: tuple[tuple[str, Any], ...]
    cost: float = COST_KNOB

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(key for key, _ in self.overrides)

    def render(self) -> str:
        return " ".join(f"{key}={_yaml_value(value)}" for key, value in self.overrides)

    def __add__(self, other: "Change") -> "Change":
        merged = dict(self.overrides)
        merged.update(dict(other.overrides))
        return Change(tuple(merged.items()), self.cost + other.cost)


def _yaml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _set(key: str, value: Any, cost: float = COST_KNOB) -> Change:
    return Change(((key, value),), cost)


def _replace_path(node: Any, parts: list[str], value: Any) -> Any:
    """A copy of dataclass `node` with the field at `parts` set to `value`."""
    head, rest = parts[0], parts[1:]
    if not dataclasses.is_dataclass(node) or head not in {f.name for f in dataclasses.fields(node)}:
        raise ConfigError(f"{head}: not a config key")
    child = _replace_path(getattr(node, head), rest, value) if rest else value
    return dataclasses.replace(node, **{head: child})


def apply_change(config: Any, change: Change) -> Optional[Any]:
    """A validated copy of `config` with `change` applied, or None if the result is invalid."""
    candidate = config
    try:
        for dotted, value in change.overrides:
            candidate = _replace_path(candidate, dotted.split("."), value)
        validate_tree(candidate)
    except ConfigError:
        return None
    return candidate


def _halvings(key: str, current: int, companion: Optional[tuple[str, int]] = None) -> Iterator[Change]:
    """`key` halved down to 1 (each halving a little dearer); `companion` (gradient accumulation)
    doubled to keep the batch."""
    value, factor, step = current, 1, 0
    while value > 1:
        value, factor, step = value // 2, factor * 2, step + 1
        extra = ((companion[0], companion[1] * factor),) if companion else ()
        yield Change(((key, value),) + extra, COST_KNOB + 0.1 * (step - 1))


def _more_gpus(keys_and_counts: list[tuple[str, int]]) -> Iterator[Change]:
    for index, factor in enumerate(WORKER_FACTORS):
        cost = COST_GPUS + index + 0.5 * (len(keys_and_counts) - 1)
        yield Change(tuple((key, count * factor) for key, count in keys_and_counts), cost)


def train_candidates(config: Any, prefix: str = "") -> Iterator[Change]:
    """Changes for a Ray Train stage config (`prefix` "sft." inside rejection sampling)."""
    scale, optim = config.scale, config.optim
    if not config.model.gradient_checkpointing:
        yield _set(f"{prefix}model.gradient_checkpointing", True)
    yield from _halvings(f"{prefix}optim.micro_batch_size", optim.micro_batch_size,
                         (f"{prefix}optim.gradient_accumulation_steps", optim.gradient_accumulation_steps))
    if scale.zero_stage < 3:
        yield _set(f"{prefix}scale.zero_stage", 3, COST_ZERO3)
    yield from _more_gpus([(f"{prefix}scale.num_workers", scale.num_workers)])
    yield from _offload_candidates(scale, f"{prefix}scale.")


def _offload_candidates(scale: Any, prefix: str) -> Iterator[Change]:
    if not scale.offload_optimizer:
        yield Change(((f"{prefix}zero_stage", max(scale.zero_stage, 1)), (f"{prefix}offload_optimizer", True)),
                     COST_OFFLOAD)
    if not scale.offload_params:
        yield Change(((f"{prefix}zero_stage", 3), (f"{prefix}offload_optimizer", True),
                      (f"{prefix}offload_params", True)), COST_OFFLOAD + 1)


def ppo_candidates(config: Any) -> Iterator[Change]:
    """Changes for a PPO config."""
    scale, rollout = config.scale, config.rollout
    if not config.model.gradient_checkpointing:
        yield _set("model.gradient_checkpointing", True)
    generators = scale.rollout.num_workers if rollout.separate_engine else scale.policy.num_workers
    yield from _halvings("rollout.generation_batch_size",
                         rollout.generation_batch_size or -(-rollout.batch_size // max(generators, 1)))
    yield from _halvings("rollout.forward_batch_size", rollout.forward_batch_size or config.optim.micro_batch_size)
    yield from _halvings("optim.micro_batch_size", config.optim.micro_batch_size)
    if config.algorithm.needs_critic:
        yield from _halvings("critic_optim.micro_batch_size", config.critic_optim.micro_batch_size)
    if scale.placement == "colocate" and not scale.offload_idle_models:
        yield _set("scale.offload_idle", True)
    if rollout.engine == "vllm" and rollout.separate_engine:
        for share in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            if share > rollout.vllm_gpu_memory_utilization:
                yield _set("rollout.vllm_gpu_memory_utilization", share)
    if scale.zero_stage < 3:
        yield _set("scale.zero_stage", 3, COST_ZERO3)
    trained = ("policy", "critic") if config.algorithm.needs_critic else ("policy",)
    for role in trained:
        yield from _more_gpus([(f"scale.{role}.num_workers", getattr(scale, role).num_workers)])
    if len(trained) > 1:
        yield from _more_gpus([(f"scale.{role}.num_workers", getattr(scale, role).num_workers) for role in trained])
    if scale.placement == "colocate":
        yield _set("scale.placement", "split", COST_SPLIT)
    yield from _offload_candidates(scale, "scale.")


def rejection_sampling_candidates(config: Any) -> Iterator[Change]:
    yield from _halvings("inference.batch_size", config.inference.batch_size)
    if config.inference.gpus_per_actor and config.inference.gpus_per_actor < 1:
        yield _set("inference.gpus_per_actor", 1, COST_GPUS)
    yield from train_candidates(config.sft, prefix="sft.")


CANDIDATES: dict[str, Callable[[Any], Iterator[Change]]] = {
    "pretrain": train_candidates, "sft": train_candidates, "reward": train_candidates, "dpo": train_candidates,
    "ppo": ppo_candidates, "rejection-sampling": rejection_sampling_candidates,
}


def _replan(config: Any, change: Change, planner: Callable[[Any], MemoryPlan]) -> Optional[MemoryPlan]:
    candidate = apply_change(config, change)
    if candidate is None:
        return None
    try:
        return planner(candidate)
    except (ConfigError, ValueError):
        return None


def advise(stage: str, config: Any, plan: MemoryPlan, planner: Callable[[Any], MemoryPlan]) -> list[str]:
    """Up to `MAX_ADVICE` changes verified (by re-running the plan) to make `config` fit, cheapest
    first; empty if it fits already."""
    if plan.fits:
        return []
    singles = list(dict.fromkeys(CANDIDATES[stage](config)))
    fitting: list[tuple[Change, MemoryPlan]] = []
    for change in singles:
        replanned = _replan(config, change, planner)
        if replanned is not None and replanned.fits:
            fitting.append((change, replanned))
    cheapest_single = min((change.cost for change, _ in fitting), default=float("inf"))
    fitting += _fitting_pairs(config, singles, planner, below=cheapest_single)
    fitting.sort(key=lambda item: item[0].cost)
    advice, advised = [], []
    for change, replanned in fitting:
        if any(change.keys >= keys for keys in advised):  # a milder value of the same knob(s) already fits
            continue
        advice.append(_describe(change, replanned))
        advised.append(change.keys)
        if len(advice) == MAX_ADVICE:
            break
    if advice:
        return advice
    combined = _greedy(config, plan, singles, planner)
    return [_describe(*combined)] if combined else []


def _fitting_pairs(config: Any, singles: list[Change], planner, below: float) -> list[tuple[Change, MemoryPlan]]:
    """Pairs of changes to different knobs, cheaper together than `below`, that fit (at most a few)."""
    pairs = sorted((a + b for i, a in enumerate(singles) for b in singles[i + 1:]
                    if not a.keys & b.keys and a.cost + b.cost < below), key=lambda change: change.cost)
    found: list[tuple[Change, MemoryPlan]] = []
    for pair in pairs:
        replanned = _replan(config, pair, planner)
        if replanned is not None and replanned.fits:
            found.append((pair, replanned))
            if len(found) == MAX_ADVICE:
                break
    return found


def _greedy(config: Any, plan: MemoryPlan, changes: list[Change], planner) -> Optional[tuple[Change, MemoryPlan]]:
    """Stack the change that lowers the worst device's peak most, until the plan fits."""
    chosen, best_plan = Change((), 0.0), plan
    for _ in range(MAX_COMBINED_STEPS):
        options = []
        for change in changes:
            replanned = _replan(config, chosen + change, planner)
            if replanned is not None and replanned.worst().bytes < best_plan.worst().bytes:
                options.append((replanned.fits, -replanned.worst().bytes, chosen + change, replanned))
        if not options:
            return None
        _, _, chosen, best_plan = max(options, key=lambda option: (option[0], option[1]))
        if best_plan.fits:
            return chosen, best_plan
    return None


def _describe(change: Change, plan: MemoryPlan) -> str:
    worst = plan.worst()
    return f"{change.render()}  (peak {gib(worst.bytes):.1f} GB: {'+'.join(worst.roles)} in {worst.phase})"


__all__ = ["Change", "advise", "apply_change"]
