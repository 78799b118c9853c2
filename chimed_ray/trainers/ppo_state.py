"""Everything PPO needs to stop and resume exactly: the driver state (step, prompt position, KL
coefficient), a deterministic prompt order, per-phase timers, and atomic checkpoints holding the
policy and critic DeepSpeed states (weights, optimizers, schedulers) next to the driver state.

Checkpoints live in `<output_dir>/checkpoints/step_NNNNNN/`, written into a temporary sibling and
renamed when complete; `checkpoints/latest` names the newest. Every worker writes its own ZeRO
shards there, so on a multi-node cluster `output_dir` must be on storage all nodes share.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from chimed_ray.utils.files import atomic_directory, atomic_write_text

if TYPE_CHECKING:
    from chimed_ray.trainers.ppo_groups import PPOGroups

STATE_FILE, LATEST = "driver_state.json", "latest"


@dataclass
class DriverState:
    """Where the run is: PPO steps done, prompts consumed, the KL coefficient, counters."""

    step: int = 0
    prompt_position: int = 0
    kl_coef: float = 0.0
    samples: int = 0
    elapsed_s: float = 0.0


class PromptOrder:
    """A fresh seeded shuffle of the prompt indices every epoch; `take` continues from a position,
    so a resumed run sees the same prompts it would have seen without stopping."""

    def __init__(self, num_prompts: int, seed: int) -> None:
        self.num_prompts, self.seed = num_prompts, seed
        self._orders: dict[int, list[int]] = {}

    def take(self, position: int, count: int) -> list[int]:
        """Indices of the `count` prompts starting at absolute `position`."""
        return [self._order(epoch)[offset] for epoch, offset in
                (divmod(absolute, self.num_prompts) for absolute in range(position, position + count))]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.num_prompts))
            random.Random(self.seed + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a run needs
        return self._orders[epoch]


@dataclass
class PhaseTimer:
    """Wall-clock seconds per phase of one PPO step."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(groups: "PPOGroups", state: DriverState, output_dir: str | Path, keep: int) -> Path:
    """Write policy + critic DeepSpeed states and the driver state atomically; prune old ones.

    A run killed at any moment leaves the previous checkpoint loadable: the new one appears only
    by a rename once complete, `latest` moves after that, and older ones are pruned last."""
    from chimed_ray.distributed.group import gather

    root = checkpoint_root(output_dir)
    target = root / f"step_{state.step:06d}"
    with atomic_directory(target) as tmp:
        refs = groups.policy.async_run("save_checkpoint", str(tmp / "policy"))
        if groups.critic is not None:
            refs += groups.critic.async_run("save_checkpoint", str(tmp / "critic"))
        gather(refs)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))  # written last: marks complete
    atomic_write_text(root / LATEST, target.name)
    finished = sorted(path for path in root.glob("step_*") if path.is_dir())
    for old in finished[:-keep]:
        hidden = old.with_name(f".{old.name}.deleting")  # a kill mid-delete leaves no half `step_*`
        shutil.rmtree(hidden, ignore_errors=True)  # left by an earlier killed run
        old.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return target


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The checkpoint `latest` names, else the newest complete one (temporary `.step_*` siblings
    of an interrupted save are never picked)."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / STATE_FILE).is_file():
            return path
    complete = sorted(path for path in root.glob("step_*") if (path / STATE_FILE).is_file())
    return complete[-1] if complete else None


def restore_checkpoint(groups: "PPOGroups", directory: Path) -> DriverState:
    """Load policy/critic states from `directory` and return the driver state saved with them."""
    from chimed_ray.distributed.group import gather

    refs = groups.policy.async_run("load_checkpoint", str(directory / "policy"))
    if groups.critic is not None:
        if not (directory / "critic").is_dir():
            raise FileNotFoundError(f"{directory}: no critic state, but this run's estimator needs a critic")
        refs += groups.critic.async_run("load_checkpoint", str(directory / "critic"))
    gather(refs)
    data = json.loads((directory / STATE_FILE).read_text())
    return DriverState(**{key: value for key, value in data.items() if key in DriverState.__dataclass_fields__})


def move_previous_run_aside(output_dir: str | Path) -> None:
    """Without `resume=true` a new run starts fresh: earlier checkpoints and metrics are renamed,
    never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("checkpoints", "metrics.jsonl"):
        path = Path(output_dir) / name
        if path.exists():
            path.rename(path.with_name(f"{name}.{stamp}"))
