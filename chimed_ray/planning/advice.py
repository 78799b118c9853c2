"""The smallest change that makes a config fit: candidate `key=value` changes, each re-planned on a
copy of the config, and only the ones whose plan fits are advised.

Candidates are tried cheapest first: knobs that only trade speed for memory (checkpointing, smaller
micro-, generation- and forward-batches, offloading idle colocated models), then ZeRO-3, more GPUs,
splitting colocated roles, and last CPU offload (slowest). If no single change fits, the greedy
combination that lowers the peak most at each step is advised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from chimed_ray.config.loader import ConfigError, validate_tree
from chimed_ray.planning.plan import MemoryPlan, gib

MAX_SINGLE_ADVICE = 3
MAX_COMBINED_STEPS = 5
WORKER_FACTORS = (2, 4, 8, 16)  # more GPUs for a trained role: x2 ... x16


@dataclass(frozen=True)
class Change:
    """Overrides (dotted key -> value) applied together."""

    overrides: tuple[tuple[str, Any], ...]

    def render(self) -> str:
        return " ".join(f"{key}={_yaml_value(value)}" for key, value in self.overrides)

    def __add__(self, other: "Change") -> "Change":
        merged = dict(self.overrides)
        merged.update(dict(other.overrides))
        return Change(tuple(merged.items()))


def _yaml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _change(**overrides: Any) -> Change:
    return Change(tuple((key.replace("__", "."), value) for key, value in overrides.items()))


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
    """`key` halved down to 1; `companion` (gradient accumulation) doubled to keep the batch."""
    value, factor = current, 1
    while value > 1:
        value, factor = value // 2, factor * 2
        extra = ((companion[0], companion[1] * factor),) if companion else ()
        yield Change(((key, value),) + extra)


def train_candidates(config: Any, prefix: str = "") -> Iterator[Change]:
    """Changes for a Ray Train stage config (`prefix` "sft." inside rejection sampling)."""
    scale, optim = config.scale, config.optim
    if not config.model.gradient_checkpointing:
        yield Change(((f"{prefix}model.gradient_checkpointing", True),))
    yield from _halvings(f"{prefix}optim.micro_batch_size", optim.micro_batch_size,
                         (f"{prefix}optim.gradient_accumulation_steps", optim.gradient_accumulation_steps))
    if scale.zero_stage < 3:
        yield Change(((f"{prefix}scale.zero_stage", 3),))
    for factor in WORKER_FACTORS:
        yield Change(((f"{prefix}scale.num_workers", scale.num_workers * factor),))
    yield from _offload_candidates(scale, f"{prefix}scale.")


def _offload_candidates(scale: Any, prefix: str) -> Iterator[Change]:
    if not scale.offload_optimizer:
        yield Change(((f"{prefix}zero_stage", max(scale.zero_stage, 1)), (f"{prefix}offload_optimizer", True)))
    if not scale.offload_params:
        yield Change(((f"{prefix}zero_stage", 3), (f"{prefix}offload_optimizer", True), (f"{prefix}offload_params", True)))


def ppo_candidates(config: Any) -> Iterator[Change]:
    """Changes for a PPO config."""
    scale, rollout = config.scale, config.rollout
    if not config.model.gradient_checkpointing:
        yield _change(model__gradient_checkpointing=True)
    generators = scale.rollout.num_workers if rollout.separate_engine else scale.policy.num_workers
    yield from _halvings("rollout.generation_batch_size",
                         rollout.generation_batch_size or -(-rollout.batch_size // max(generators, 1)))
    yield from _halvings("rollout.forward_batch_size", rollout.forward_batch_size or config.optim.micro_batch_size)
    yield from _halvings("optim.micro_batch_size", config.optim.micro_batch_size)
    if config.algorithm.needs_critic:
        yield from _halvings("critic_optim.micro_batch_size", config.critic_optim.micro_batch_size)
    if scale.placement == "colocate" and not scale.offload_idle_models:
        yield _change(scale__offload_idle=True)
    if rollout.engine == "vllm" and rollout.separate_engine:
        for share in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            if share > rollout.vllm_gpu_memory_utilization:
                yield _change(rollout__vllm_gpu_memory_utilization=share)
    if scale.zero_stage < 3:
        yield _change(scale__zero_stage=3)
    trained = ("policy", "critic") if config.algorithm.needs_critic else ("policy",)
    for factor in WORKER_FACTORS:
        for role in trained:
            yield Change(((f"scale.{role}.num_workers", getattr(scale, role).num_workers * factor),))
        yield Change(tuple((f"scale.{role}.num_workers", getattr(scale, role).num_workers * factor) for role in trained))
    if scale.placement == "colocate":
        yield _change(scale__placement="split")
    yield from _offload_candidates(scale, "scale.")


def rejection_sampling_candidates(config: Any) -> Iterator[Change]:
    yield from _halvings("inference.batch_size", config.inference.batch_size)
    if config.inference.gpus_per_actor and config.inference.gpus_per_actor < 1:
        yield _change(inference__gpus_per_actor=1)
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
    """Changes verified (by re-running the plan) to make `config` fit, smallest first; empty if it fits."""
    if plan.fits:
        return []
    changes = list(dict.fromkeys(CANDIDATES[stage](config)))
    advice, advised_keys = [], set()
    for change in changes:
        keys = tuple(key for key, _ in change.overrides)
        if keys in advised_keys:  # a milder value of the same knob already fits
            continue
        replanned = _replan(config, change, planner)
        if replanned is not None and replanned.fits:
            advice.append(_describe(change, replanned))
            advised_keys.add(keys)
            if len(advice) == MAX_SINGLE_ADVICE:
                return advice
    if advice:
        return advice
    combined = _cheapest_pair(config, changes, planner) or _greedy(config, plan, changes, planner)
    return [_describe(*combined)] if combined else []


def _cheapest_pair(config: Any, changes: list[Change], planner) -> Optional[tuple[Change, MemoryPlan]]:
    """Two changes together, cheapest first (by their positions in the candidate order)."""
    pairs = sorted(((i, j) for i in range(len(changes)) for j in range(i + 1, len(changes))), key=lambda p: (sum(p), p))
    for i, j in pairs:
        keys_i = {key for key, _ in changes[i].overrides}
        if keys_i & {key for key, _ in changes[j].overrides}:
            continue  # two values of one knob
        combined = changes[i] + changes[j]
        replanned = _replan(config, combined, planner)
        if replanned is not None and replanned.fits:
            return combined, replanned
    return None


def _greedy(config: Any, plan: MemoryPlan, changes: list[Change], planner) -> Optional[tuple[Change, MemoryPlan]]:
    """Stack the change that lowers the worst device's peak most, until the plan fits."""
    chosen, best_plan = Change(()), plan
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
