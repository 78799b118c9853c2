"""An actor group: N Ray actors of one worker class forming one torch.distributed process group.

Rank 0 picks MASTER_ADDR/MASTER_PORT on its node; every rank then joins with gloo (CPU) or nccl
(GPU). The driver talks to the group with explicit calls at the call site:

    refs = policy.async_run("train_step", experience)         # same arguments on every rank
    refs = reference.async_run_sharded("logprobs", rollout)   # rank r gets rows shard r of the batch
    logprobs = gather(refs)                                     # raises at the first failed rank
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from chimed_ray.distributed.placement import Slot


class ActorGroup:
    """Creates `len(slots)` actors of `worker_cls` on their placement slots and joins them into
    one process group.

    Args:
        name: Role name, used in actor names and error messages.
        worker_cls: A `chimed_ray.distributed.worker.Worker` subclass (not yet `ray.remote`).
        slots: One placement slot per rank.
        backend: `gloo` or `nccl`.
        env_vars: Extra environment variables for the actors.
    """

    def __init__(self, name: str, worker_cls: type, slots: Sequence[Slot], backend: str,
                 env_vars: Optional[dict[str, str]] = None) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name = name
        remote_cls = ray.remote(worker_cls)
        env = {"TOKENIZERS_PARALLELISM": "false", **(env_vars or {})}
        self.actors = [
            remote_cls.options(
                num_cpus=slot.num_cpus,
                num_gpus=slot.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=slot.placement_group, placement_group_bundle_index=slot.bundle_index,
                ),
                runtime_env={"env_vars": env},
            ).remote()
            for slot in slots
        ]
        # Nothing blocks here, so several groups start at once: every rank's rendezvous call takes
        # rank 0's address as an ObjectRef, which Ray resolves before running it. Calls queued
        # later on these actors (model setup) run after they joined the process group.
        address = self.actors[0].master_address.remote()
        self.ready = [
            actor.setup_distributed.remote(rank, self.world_size, address, backend)
            for rank, actor in enumerate(self.actors)
        ]

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def wait_ready(self) -> "ActorGroup":
        """Block until every rank has joined the process group (raises a rank's setup error)."""
        import ray

        ray.get(self.ready)
        return self

    def async_run(self, method: str, *args: Any, **kwargs: Any) -> list:
        """Call `method` on every rank with the same arguments; returns one ObjectRef per rank."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def async_run_sharded(self, method: str, batch: Any, *args: Any, **kwargs: Any) -> list:
        """Call `method` on every rank with that rank's row shard of `batch` (a `RolloutBatch`
        or a list); results come back in rank order, so concatenating them restores row order."""
        refs = []
        for rank, actor in enumerate(self.actors):
            shard = _shard(batch, rank, self.world_size)
            refs.append(getattr(actor, method).remote(shard, *args, **kwargs))
        return refs

    def run(self, method: str, *args: Any, **kwargs: Any) -> list:
        """Blocking `async_run`: the results of every rank."""
        return gather(self.async_run(method, *args, **kwargs))

    def rank_of(self, actor_id: Optional[str]) -> Optional[int]:
        """The rank of the actor with hex id `actor_id` in this group, or None."""
        ids = [actor._actor_id.hex() for actor in self.actors]
        return ids.index(actor_id) if actor_id in ids else None

    def shutdown(self) -> None:
        """Kill the group's actors (the placement group is released by its owner)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class WorkerDiedError(RuntimeError):
    """A worker of an actor group died mid-run; the message names the role and what to do next."""


def gather(refs: Sequence[Any]) -> list:
    """`ray.get(refs)` that fails fast: the first failed call raises at once, instead of waiting
    for the other ranks, which may block forever in a collective with the dead one."""
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)  # raises the first failure (e.g. ActorDiedError) now
    return ray.get(list(refs))


def _shard(batch: Any, rank: int, world_size: int) -> Any:
    if hasattr(batch, "shard"):
        return batch.shard(rank, world_size)
    if isinstance(batch, (list, tuple)):
        if len(batch) % world_size:
            raise ValueError(f"{len(batch)} items do not split evenly over {world_size} workers")
        per_rank = len(batch) // world_size
        return batch[rank * per_rank : (rank + 1) * per_rank]
    raise TypeError(f"cannot shard a {type(batch).__name__}; pass a RolloutBatch or a list")
