"""Placement groups for the PPO roles: `split` gives each role its own bundles, `colocate` puts rank
i of every role on bundle i of one shared placement group, each role taking a fraction of it
(OpenRLHF's colocation: e.g. policy, critic, reference and reward share each GPU at 0.25)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class RoleResources:
    """What each actor of one role asks for."""

    num_workers: int
    num_cpus: float
    num_gpus: float  # 0 on CPU-only runs


@dataclass
class Slot:
    """Where one actor goes: a bundle of a placement group and the share of it the actor takes."""

    placement_group: Any  # ray.util.placement_group.PlacementGroup
    bundle_index: int
    num_cpus: float
    num_gpus: float


def _ready(bundles: list[dict[str, float]], name: str, timeout_s: float):
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(bundles, strategy="PACK", name=name)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(
            f"placement group {name!r} with bundles {bundles} was not scheduled within {timeout_s:g}s; "
            f"the cluster has {ray.cluster_resources()}"
        )
    return group


def check_fits(roles: dict[str, RoleResources]) -> None:
    """Fail at once, naming the roles, if the running Ray cluster cannot hold them all (a placement
    group that does not fit would otherwise wait forever)."""
    import ray

    from chimed_ray.config.loader import ConfigError

    total = ray.cluster_resources()
    for resource, per_role in (("CPU", {n: r.num_workers * r.num_cpus for n, r in roles.items()}),
                               ("GPU", {n: r.num_workers * r.num_gpus for n, r in roles.items()})):
        need = sum(per_role.values())
        if need > total.get(resource, 0) + 1e-9:
            detail = ", ".join(f"{name} {amount:g}" for name, amount in per_role.items() if amount)
            raise ConfigError(f"scale: the roles need {need:g} {resource}s ({detail}); the Ray cluster has "
                              f"{total.get(resource, 0):g}. Lower scale.<role>.num_workers or cpus/gpus_per_worker")


def _bundle(num_cpus: float, num_gpus: float) -> dict[str, float]:
    return {"CPU": num_cpus, "GPU": num_gpus} if num_gpus else {"CPU": num_cpus}


def plan_slots(
    roles: dict[str, RoleResources], placement: Literal["split", "colocate"], run_name: str, timeout_s: float = 120.0
) -> dict[str, list[Slot]]:
    """Reserve placement groups and return, per role, one slot per rank.

    Args:
        roles: Role name -> per-actor resources (roles with 0 workers are skipped).
        placement: `split` or `colocate`.
        run_name: Prefix of the placement groups' names (they show in `ray status`).
        timeout_s: How long to wait for the cluster to grant the bundles.
    """
    roles = {name: role for name, role in roles.items() if role.num_workers > 0}
    check_fits(roles)
    if placement == "split":
        slots = {}
        for name, role in roles.items():
            group = _ready([_bundle(role.num_cpus, role.num_gpus)] * role.num_workers, f"{run_name}-{name}", timeout_s)
            slots[name] = [Slot(group, i, role.num_cpus, role.num_gpus) for i in range(role.num_workers)]
        return slots
    num_bundles = max(role.num_workers for role in roles.values())
    bundles = []
    for index in range(num_bundles):
        members = [role for role in roles.values() if role.num_workers > index]
        gpus = 1.0 if any(role.num_gpus for role in members) else 0.0
        bundles.append(_bundle(sum(role.num_cpus for role in members), gpus))
    group = _ready(bundles, f"{run_name}-colocated", timeout_s)
    return {
        name: [Slot(group, i, role.num_cpus, role.num_gpus) for i in range(role.num_workers)]
        for name, role in roles.items()
    }


def release(slots: dict[str, list[Slot]]) -> None:
    """Remove every placement group behind `slots` (their actors must be gone or going)."""
    import ray

    seen = set()
    for role_slots in slots.values():
        for slot in role_slots:
            group = slot.placement_group
            if group.id not in seen:
                seen.add(group.id)
                ray.util.remove_placement_group(group)
