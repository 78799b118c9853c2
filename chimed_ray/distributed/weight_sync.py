"""Weight sync: after a policy update, a separate rollout engine samples with the new weights.

`rollout.weight_sync=collective` (the default): policy rank 0 and every engine worker join one
torch.distributed process group of their own, gloo on CPU and NCCL on GPU. It is built straight
on a `TCPStore` hosted by policy rank 0 (as vLLM's `StatelessProcessGroup` and OpenRLHF do), so
it never touches DeepSpeed's default group. The weights go over it in buckets of
`rollout.sync_bucket_mb`: each bucket is one flat byte buffer that rank 0 fills and broadcasts;
under ZeRO-3 every policy rank gathers only that bucket's parameters; each engine loads a bucket
as it arrives. So a sync holds at most about two buckets of extra memory on either side, and the
object store never sees a weight. `weight_sync=object_store` is the fallback: rank 0 puts the
full state dict into Ray's object store and every engine pulls it.

A LoRA policy sends merged weights under the base model's names (`rollout.lora_sync=merged`), or
its adapters alone (`adapter`), for an engine that holds the same adapters.

    sync = WeightSync(policy, rollout, "collective", bucket_mb=256, backend="gloo")
    report = sync()  # bytes per engine, peak extra memory of each side; the driver's step 8
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Iterator, Optional

if TYPE_CHECKING:
    import torch

    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.distributed.group import ActorGroup

ALIGN = 64  # bytes: every tensor starts aligned in a bucket, so a byte slice views as any dtype
TIMEOUT = timedelta(minutes=30)
Loader = Callable[[list[tuple[str, "torch.Tensor"]]], None]


@dataclass(frozen=True)
class Slot:
    """One engine tensor inside a bucket: its name, shape, dtype and byte offset."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "bfloat16"
    offset: int
    nbytes: int


@dataclass
class Bucket:
    """What one broadcast carries: the policy parameters gathered for it and the tensors it holds."""

    sources: list[str] = field(default_factory=list)  # policy parameter names (ZeRO-3 gathers exactly these)
    slots: list[Slot] = field(default_factory=list)
    nbytes: int = 0

    def to_plain(self) -> dict:
        """Lists, strings and ints only (for RPC serialisers that refuse classes)."""
        return {"sources": self.sources, "nbytes": self.nbytes,
                "slots": [[s.name, list(s.shape), s.dtype, s.offset, s.nbytes] for s in self.slots]}

    @classmethod
    def from_plain(cls, plain: dict) -> "Bucket":
        slots = [Slot(name, tuple(shape), dtype, offset, nbytes) for name, shape, dtype, offset, nbytes in plain["slots"]]
        return cls(list(plain["sources"]), slots, int(plain["nbytes"]))


@dataclass(frozen=True)
class Unit:
    """One tensor the engine receives and the policy parameters it is computed from (a merged
    LoRA weight needs its base weight and both adapters)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        import torch

        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def plan_buckets(units: list[Unit], bucket_bytes: int) -> list[Bucket]:
    """Pack units in order into buckets of at most `bucket_bytes` (a larger unit goes alone)."""
    buckets: list[Bucket] = []
    current = Bucket()
    for unit in units:
        offset = -(-current.nbytes // ALIGN) * ALIGN
        if current.slots and offset + unit.nbytes > bucket_bytes:
            buckets.append(current)
            current, offset = Bucket(), 0
        current.slots.append(Slot(unit.name, unit.shape, unit.dtype, offset, unit.nbytes))
        current.sources.extend(source for source in unit.sources if source not in current.sources)
        current.nbytes = offset + unit.nbytes
    if current.slots:
        buckets.append(current)
    return buckets


def weight_units(module: "torch.nn.Module", lora_sync: Optional[str] = None) -> list[Unit]:
    """What the engine receives from `module`: every parameter under its own name, or for a
    peft model (`lora_sync` set) the merged base weights or the adapters alone. Under ZeRO-3 the
    full shape comes from `ds_shape` (the local tensor is a slice)."""
    import torch

    params = dict(module.named_parameters())
    shapes = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in params.items()}
    dtypes = {name: str(p.dtype).removeprefix("torch.") for name, p in params.items()}
    if lora_sync is None:
        return [Unit(name, shapes[name], dtypes[name], (name,)) for name in params]
    if lora_sync == "adapter":
        return [Unit(name, shapes[name], dtypes[name], (name,)) for name in params if ".lora_" in name]
    units = []
    for sources in lora_groups(list(params)):
        meta = {name: torch.empty(shapes[name], dtype=getattr(torch, dtypes[name]), device="meta") for name in sources}
        for name, tensor in merged_lora(meta).items():  # one merged tensor per group (none for a skipped copy)
            units.append(Unit(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), tuple(sources)))
    return units


def lora_groups(names: list[str]) -> Iterator[list[str]]:
    """Parameters that merge together: a LoRA layer's base weight with its two adapters; any
    other parameter alone; adapters are never alone."""
    from chimed_ray.models.lora import ADAPTER_NAME

    present = set(names)
    for name in names:
        if ".lora_" in name:
            continue
        if name.endswith(".base_layer.weight"):
            stem = name.removesuffix(".base_layer.weight")
            yield [name] + [f"{stem}.lora_{ab}.{ADAPTER_NAME}.weight" for ab in "AB"
                            if f"{stem}.lora_{ab}.{ADAPTER_NAME}.weight" in present]
        else:
            yield [name]


def merged_lora(state: dict[str, "torch.Tensor"], scaling: float = 1.0) -> dict[str, "torch.Tensor"]:
    from chimed_ray.models.lora import merge_lora_state_dict

    return merge_lora_state_dict(state, scaling)


@dataclass
class SyncStats:
    """What one side of a sync moved and the most memory it held on top of what it had before."""

    nbytes: int = 0
    peak_extra_bytes: int = 0


class PeakMemory:
    """Peak extra memory of a block: CUDA's peak allocation on GPU; on CPU the resident set size,
    sampled every millisecond by a thread (torch's CPU allocator keeps no statistics)."""

    def __init__(self, device) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.extra = 0

    def __enter__(self) -> "PeakMemory":
        import threading

        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = resident_bytes()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            self.extra = torch.cuda.max_memory_allocated() - self.base
            return
        self.done.set()
        self.thread.join()
        self.extra = max(self.peak, resident_bytes()) - self.base


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; psutil elsewhere)."""
    import os

    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class SyncGroup:
    """A process group of its own over a `TCPStore` (rank 0 hosts it): gloo or NCCL."""

    def __init__(self, address: tuple[str, int], rank: int, world_size: int, backend: str) -> None:
        import torch.distributed as dist

        host, port = address
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=TIMEOUT,
                                   wait_for_workers=False)
        prefixed = dist.PrefixStore("chimed_ray/weight_sync", self.store)
        if backend == "nccl":
            if not hasattr(dist, "ProcessGroupNCCL"):
                raise RuntimeError("rollout.weight_sync=collective on GPU needs a CUDA build of torch (NCCL)")
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = TIMEOUT
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, TIMEOUT)
        self.rank, self.world_size = rank, world_size

    def broadcast(self, tensor: "torch.Tensor") -> None:
        """Rank 0's `tensor` into every rank's `tensor`, in place."""
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()


class WeightSender:
    """The policy side of a collective sync. Every policy rank holds one (ZeRO-3 gathers are
    collectives over the policy's own group); only rank 0 is in the sync group and broadcasts."""

    def __init__(self, module: "torch.nn.Module", zero3: bool, lora_sync: Optional[str], scaling: float,
                 bucket_bytes: int, group: Optional[SyncGroup], device: "torch.device") -> None:
        self.module, self.zero3, self.group, self.device = module, zero3, group, device
        self.transform = (lambda state: merged_lora(state, scaling)) if lora_sync == "merged" else dict
        self.units = {unit.name: unit for unit in weight_units(module, lora_sync)}
        self.buckets = plan_buckets(list(self.units.values()), bucket_bytes)

    def send(self) -> SyncStats:
        """Broadcast every bucket (rank 0) or join its ZeRO-3 gathers (other ranks)."""
        with PeakMemory(self.device) as memory:
            self._send()
        return SyncStats(sum(bucket.nbytes for bucket in self.buckets), memory.extra)

    def _send(self) -> None:
        import torch

        params = dict(self.module.named_parameters())
        for bucket in self.buckets:
            with gathered([params[name] for name in bucket.sources], self.zero3), torch.no_grad():
                if self.group is None:
                    continue
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
                for slot in bucket.slots:
                    unit = self.units[slot.name]
                    tensor = self.transform({name: params[name].detach() for name in unit.sources})[slot.name]
                    # Both are on the policy's device, so NCCL never stages a bucket through host memory.
                    buffer[slot.offset : slot.offset + slot.nbytes].copy_(tensor.contiguous().view(-1).view(torch.uint8))
                    del tensor
                self.group.broadcast(buffer)
                del buffer


@contextlib.contextmanager
def gathered(params: list, zero3: bool):
    """Under ZeRO-3, the full tensors of `params` only (one bucket), released on exit."""
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield


def receive_buckets(group: SyncGroup, buckets: list[Bucket], device, load: Loader) -> SyncStats:
    """The engine side: receive each bucket into one flat buffer and `load` its tensors (views
    into the buffer) before the next bucket arrives."""
    import torch

    with PeakMemory(device) as memory:
        for bucket in buckets:
            buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
            group.broadcast(buffer)
            load([(slot.name, buffer[slot.offset : slot.offset + slot.nbytes].view(getattr(torch, slot.dtype)).view(slot.shape))
                  for slot in bucket.slots])
            del buffer
    return SyncStats(sum(bucket.nbytes for bucket in buckets), memory.extra)


class WeightSync:
    """The driver side: joins the policy and the engine group once, then `sync()` pushes weights.

    Args:
        policy: The policy actor group (`PolicyWorker`s).
        rollout: The separate engine group (`RolloutWorker`s).
        mode: `collective` or `object_store`.
        bucket_mb: Bucket size of a collective sync.
        backend: `gloo` (CPU) or `nccl` (GPU).
        lora_sync: `merged` or `adapter` (used only when the policy has LoRA adapters).
        lora: The policy's `model.lora`; with `adapter` the engines wrap their models in the same
            adapters and receive only those (one engine per vLLM instance, tensor parallel 1).
    """

    def __init__(self, policy: "ActorGroup", rollout: "ActorGroup", mode: str, bucket_mb: int = 256,
                 backend: str = "gloo", lora_sync: str = "merged", lora: Optional["LoRAConfig"] = None) -> None:
        import ray

        self.policy, self.rollout, self.mode, self.buckets = policy, rollout, mode, None
        if mode != "collective":
            return
        address = ray.get(policy.actors[0].master_address.remote())
        world_size = 1 + rollout.world_size
        policy_refs = policy.async_run("open_weight_sync", address, world_size, backend, lora_sync, bucket_mb * 2**20)
        adapters = lora if lora is not None and lora.enabled and lora_sync == "adapter" else None
        engine_refs = [actor.open_weight_sync.remote(address, rank, world_size, backend, adapters)
                       for rank, actor in enumerate(rollout.actors, start=1)]
        from chimed_ray.distributed.group import gather

        self.buckets = ray.put(gather(policy_refs + engine_refs)[0])

    def __call__(self) -> SyncReport:
        """Push the policy's current weights into every engine."""
        import ray

        from chimed_ray.distributed.group import gather

        if self.mode == "collective":
            engine_refs = self.rollout.async_run("receive_weights", self.buckets)
            sent = gather(engine_refs + self.policy.async_run("send_weights"))
            engines, policy = sent[: len(engine_refs)], sent[len(engine_refs)]
        else:
            state_refs = self.policy.async_run("full_state_dict")  # rank 0 holds the weights, the others None
            engines, policy = ray.get(self.rollout.async_run("load_weights", state_refs[0])), None
            ray.get(state_refs[1:])
        return SyncReport(engines[0].nbytes, max(stats.peak_extra_bytes for stats in engines),
                          policy.peak_extra_bytes if policy is not None else None)


@dataclass
class SyncReport:
    """One sync, for the step's metrics: bytes per engine and the peak extra memory of each side
    (the policy's is None on the object-store path, where Ray copies the state dict)."""

    nbytes: int
    engine_peak_extra_bytes: int
    policy_peak_extra_bytes: Optional[int]
