"""Ray actor groups on placement groups, the PPO role workers, and policy -> engine weight sync."""

from chimed_ray.distributed.group import ActorGroup
from chimed_ray.distributed.placement import RoleResources, Slot, plan_slots, release

__all__ = ["ActorGroup", "RoleResources", "Slot", "plan_slots", "release"]
