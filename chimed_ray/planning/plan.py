"""What the memory plan holds: per role, the bytes on one of its devices in every phase of a stage,
which roles share a device, and from that the peak per device and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from chimed_ray.planning.memory import GIB

PROBLEM = "does not fit: "  # a note that fails the plan whatever the totals (see MemoryPlan.problems)


@dataclass(frozen=True)
class Footprint:
    """Bytes on one device in one phase, by kind. `gathered` is ZeRO-3 weights gathered whole for
    generation; `buffers` the CUDA context and DeepSpeed's reduction buckets; `reserved` what an
    engine claims up front (vLLM's gpu_memory_utilization share)."""

    parameters: int = 0
    gradients: int = 0
    optimizer: int = 0
    gathered: int = 0
    activations: int = 0
    logits: int = 0
    kv_cache: int = 0
    buffers: int = 0
    reserved: int = 0

    @property
    def model_states(self) -> int:
        """Parameters, gradients and optimizer states (what DeepSpeed's estimators count)."""
        return self.parameters + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def scaled(self, copies: int) -> "Footprint":
        """`copies` workers of this role on one device (fractional GPUs)."""
        return Footprint(**{f.name: getattr(self, f.name) * copies for f in fields(self)})


@dataclass
class RolePlan:
    """One role (a model and its workers): how many devices it spans and its footprint per device
    in each phase of the stage (idle phases hold whatever stays resident)."""

    role: str
    num_workers: int
    workers_per_device: int
    phases: dict[str, Footprint]
    host_bytes: int = 0  # DeepSpeed's host-RAM figure per node (offload, loading)
    notes: list[str] = field(default_factory=list)

    @property
    def num_devices(self) -> int:
        return -(-self.num_workers // self.workers_per_device)

    def on_device(self, phase: str) -> Footprint:
        """This role's bytes on one device during `phase` (all its workers sharing that device)."""
        return self.phases.get(phase, Footprint()).scaled(self.workers_per_device)

    def peak(self) -> tuple[str, int]:
        """(phase, bytes) of this role's highest phase on one device."""
        phase = max(self.phases, key=lambda name: self.on_device(name).total)
        return phase, self.on_device(phase).total


@dataclass
class DevicePeak:
    """The highest total on one device and when it happens."""

    roles: tuple[str, ...]
    phase: str
    bytes: int


@dataclass
class MemoryPlan:
    """The plan of one stage config. `shared` lists groups of roles placed on the same devices
    (colocation); a device's total in a phase is the sum over its roles."""

    stage: str
    device: str  # "gpu" or "cpu" (on CPU the figures are host RAM per worker process)
    budget_gb: float  # scale.gpu_memory_gb
    phases: list[str]
    roles: dict[str, RolePlan]
    shared: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_gb * GIB)

    def device_groups(self) -> list[tuple[str, ...]]:
        """Roles sharing devices, then every other role alone."""
        grouped = {role for group in self.shared for role in group}
        return list(self.shared) + [(role,) for role in self.roles if role not in grouped]

    def group_peak(self, group: tuple[str, ...]) -> DevicePeak:
        totals = {phase: sum(self.roles[r].on_device(phase).total for r in group) for phase in self.phases}
        phase = max(self.phases, key=lambda name: totals[name])
        return DevicePeak(group, phase, totals[phase])

    def device_peaks(self) -> list[DevicePeak]:
        return [self.group_peak(group) for group in self.device_groups()]

    def worst(self) -> DevicePeak:
        return max(self.device_peaks(), key=lambda peak: peak.bytes)

    @property
    def applies(self) -> bool:
        """The GPU budget binds only GPU runs."""
        return self.device == "gpu"

    @property
    def problems(self) -> list[str]:
        """Notes that fail the plan on their own (e.g. vLLM's share cannot hold the weights)."""
        return [note for note in self.notes if note.startswith(PROBLEM)]

    @property
    def fits(self) -> bool:
        return not self.applies or (self.worst().bytes <= self.budget_bytes and not self.problems)

    def failing(self) -> Optional[DevicePeak]:
        worst = self.worst()
        return worst if self.applies and worst.bytes > self.budget_bytes else None


def gib(value: int) -> float:
    """Bytes as GB of 2^30 bytes (DeepSpeed's estimators and nvidia-smi use the same unit)."""
    return round(value / GIB, 2)
