"""Offload and reload: how colocated roles take turns on one device.

With `placement=colocate` and `scale.offload_idle`, the PPO driver runs one phase at a time
(generate, score, train) and only the models a phase needs stay on the device:

    turns = Turns(enabled=True)
    refs = turns.run(groups.reference, "logprobs", rollout)   # reload -> logprobs -> offload

Mechanism (worker side, `DeviceStates`). Every tensor a role owns on its device (parameters,
ZeRO-3 partitions, buffers, DeepSpeed's flat fp32/bf16 buffers, gradient partitions, optimizer
moments) is found once, grouped by the storage it lives in, and offloaded storage by storage:
the bytes are copied to a host buffer (pinned on GPU) and the device storage is resized to 0;
reload resizes it back and copies the bytes in. Resizing the *storage* keeps every view into it
valid (DeepSpeed's parameters are views into flat buffers, its gradient partitions views into
another), so nothing has to be re-linked, and the same code runs for ZeRO-0/1/2/3, frozen replicas
and ZeRO-3 inference shards, with any optimizer. On CPU the device is the host: the storages are
really freed (size 0) and the state lives only in the separate host copy, so a test can check
that states left and came back bit-identical.

Why not DeepSpeed's `engine.offload_states()`: in the installed DeepSpeed (0.19) its ZeRO-3 path
asserts `FusedAdam` (we use torch AdamW or DeepSpeedCPUAdam), it refuses engines with
`offload_param`, frozen roles have no optimizer for it to act on, and on a CPU run it would copy
CPU to CPU and free nothing, so the CPU twin would prove nothing.

A vLLM engine does not own torch storages we can see: it sleeps (`LLM.sleep(level=1)`, weights to
host, KV cache dropped) and wakes (`LLM.wake_up()`); its `LLM` must be created with
`enable_sleep_mode=True`.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Optional

if TYPE_CHECKING:
    import torch

    from chimed_ray.distributed.group import ActorGroup

States = Literal["weights", "all"]


def _tensors_in(value: Any) -> Iterator["torch.Tensor"]:
    """Tensors held directly in `value` or one container level down (lists, tuples, dicts)."""
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        yield from (item for item in value if isinstance(item, torch.Tensor))
    elif isinstance(value, dict):
        yield from (item for item in value.values() if isinstance(item, torch.Tensor))


def weight_tensors(module: "torch.nn.Module") -> Iterator["torch.Tensor"]:
    """Parameters (and their ZeRO-3 partitions) and buffers of `module`."""
    for param in module.parameters():
        yield param.data
        if hasattr(param, "ds_tensor"):
            yield param.ds_tensor
    yield from module.buffers()


def optimizer_tensors(optimizer: Any) -> Iterator["torch.Tensor"]:
    """Optimizer moments and master weights, and a DeepSpeed ZeRO wrapper's flat buffers
    (fp32 partitions, gradient partitions) held as its attributes."""
    if optimizer is None:
        return
    inner = getattr(optimizer, "optimizer", None)
    for torch_optimizer in (optimizer, inner):
        if torch_optimizer is None or not hasattr(torch_optimizer, "state"):
            continue
        for group in getattr(torch_optimizer, "param_groups", []):
            yield from (param.data for param in group["params"])
        for state in torch_optimizer.state.values():
            yield from _tensors_in(state)
    for value in vars(optimizer).values():
        yield from _tensors_in(value)


@dataclass
class _Storage:
    storage: Any  # torch.UntypedStorage on the device
    nbytes: int
    host: Optional["torch.Tensor"] = None  # uint8 [nbytes] while offloaded


@dataclass
class DeviceStates:
    """The storages one role keeps on `device`, split into weights and the rest (optimizer states,
    master weights, gradients), each offloadable and reloadable on its own."""

    device: "torch.device"
    groups: dict[str, list[_Storage]] = field(default_factory=dict)

    @classmethod
    def collect(cls, device: "torch.device", weights: Iterable["torch.Tensor"],
                others: Iterable["torch.Tensor"] = ()) -> "DeviceStates":
        """Group the storages behind `weights` (needed for forwards) and `others` (needed only for
        training), each storage once; tensors off `device` (DeepSpeed's own CPU offload) stay put."""
        seen: set[int] = set()
        groups: dict[str, list[_Storage]] = {"weights": [], "optimizer": []}
        for name, tensors in (("weights", weights), ("optimizer", others)):
            for tensor in tensors:
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if tensor.device.type != device.type or storage.nbytes() == 0 or key in seen:
                    continue
                seen.add(key)
                if not storage.resizable():
                    raise TypeError(f"offload: a {name} tensor {tuple(tensor.shape)} has a fixed-size storage "
                                    "(e.g. memory-mapped from a checkpoint); call make_resizable first")
                groups[name].append(_Storage(storage, storage.nbytes()))
        return cls(device, groups)

    def _selected(self, states: States) -> list[_Storage]:
        return self.groups["weights"] + (self.groups["optimizer"] if states == "all" else [])

    def offload(self) -> int:
        """Move every storage still on the device to host memory; returns the bytes moved."""
        import torch

        pin = self.device.type == "cuda"
        moved = 0
        for entry in self._selected("all"):
            if entry.host is not None:
                continue
            entry.host = torch.empty(entry.nbytes, dtype=torch.uint8, device="cpu", pin_memory=pin)
            entry.host.untyped_storage().copy_(entry.storage)
            entry.storage.resize_(0)
            moved += entry.nbytes
        if pin:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return moved

    def reload(self, states: States = "all") -> int:
        """Bring `weights` (forward passes) or `all` states back; returns the bytes moved."""
        moved = 0
        for entry in self._selected(states):
            if entry.host is None:
                continue
            entry.storage.resize_(entry.nbytes)
            entry.storage.copy_(entry.host.untyped_storage())
            entry.host = None
            moved += entry.nbytes
        return moved

    def resident_bytes(self) -> dict[str, int]:
        """Bytes of `weights` and of `optimizer` states on the device (0 once offloaded), and the
        bytes held in `host` copies."""
        resident = {name: sum(entry.storage.nbytes() for entry in entries) for name, entries in self.groups.items()}
        resident["host"] = sum(entry.host.numel() for entry in self._selected("all") if entry.host is not None)
        return resident

    def is_resident(self, states: States) -> bool:
        return all(entry.host is None for entry in self._selected(states))

    def digest(self) -> str:
        """A hash of every state's bytes, wherever they live (to check a round trip is exact)."""
        digest = hashlib.sha256()
        for entry in self._selected("all"):
            source = entry.host if entry.host is not None else _bytes_of(entry.storage)
            # A copy: numpy sharing a storage would pin it to a fixed size for good.
            digest.update(source.clone().numpy().tobytes())
        return digest.hexdigest()[:16]


def _bytes_of(storage) -> "torch.Tensor":
    import torch

    view = torch.empty(0, dtype=torch.uint8, device=storage.device)
    view.set_(storage)
    return view.cpu()


def make_resizable(module: "torch.nn.Module") -> None:
    """Give parameters and buffers that live in fixed-size storages (memory-mapped safetensors)
    storages of their own, so they can be offloaded; tied weights stay tied (same Parameter)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.numel() and not tensor.untyped_storage().resizable():
            tensor.data = tensor.data.clone()


def module_states(module: "torch.nn.Module", device: "torch.device", optimizer: Any = None) -> DeviceStates:
    """The offloadable states of a model (a DeepSpeed engine's `.module` or a plain replica) and
    of its optimizer (a DeepSpeed ZeRO wrapper, a torch optimizer, or None for frozen roles)."""
    make_resizable(module)
    weights = list(weight_tensors(module))
    for name in ("lp_param_buffer", "bit16_groups_flat"):  # ZeRO-3 / ZeRO-1,2 flat bf16 weights
        weights += list(_tensors_in(getattr(optimizer, name, None)))
    return DeviceStates.collect(device, weights, optimizer_tensors(optimizer))


def sleep_vllm(engine: Any, level: int = 1) -> None:
    """Free a vLLM engine's GPU memory: level 1 keeps weights in host memory, drops the KV cache."""
    engine.llm.sleep(level=level)


def wake_vllm(engine: Any) -> None:
    engine.llm.wake_up()
    engine.llm.reset_prefix_cache()  # blocks cached before sleeping are gone


class Turns:
    """The driver's side: colocated roles take turns on the device, one phase after another.

    `run(group, method, batch, ...)` is `group.async_run_sharded(method, batch, ...)` when turns are
    off (split placement: roles run in parallel). When on, it queues, without blocking, reload ->
    method -> offload on every rank, and makes the reload wait for the previous turn's offload
    (an ObjectRef argument that Ray resolves first), so at most one role holds the device at a
    time while the driver keeps going.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._previous: list = []  # the last turn's offload refs

    def run(self, group: "ActorGroup", method: str, batch: Any, *args: Any, states: States = "weights",
            **kwargs: Any) -> list:
        if not self.enabled:
            return group.async_run_sharded(method, batch, *args, **kwargs)
        group.async_run("reload", states, *self._previous)  # top-level refs: Ray waits for them
        refs = group.async_run_sharded(method, batch, *args, **kwargs)
        self._previous = group.async_run("offload")
        return refs

    def offload_all(self, groups: Iterable["ActorGroup"]) -> None:
        """Take every role off the device (after setup); blocks until they are off."""
        from chimed_ray.distributed.group import gather

        if self.enabled:
            gather([ref for group in groups for ref in group.async_run("offload")])

    def settle(self) -> None:
        """Block until the last turn's offload is done."""
        from chimed_ray.distributed.group import gather

        gather(self._previous)

    @contextlib.contextmanager
    def holding(self, group: "ActorGroup", states: States = "all"):
        """Keep `group` on the device for the calls made inside (e.g. a checkpoint save)."""
        from chimed_ray.distributed.group import gather

        if not self.enabled:
            yield
            return
        gather(group.async_run("reload", states, *self._previous))
        try:
            yield
        finally:  # nested holdings: the next turn waits for every one of them to leave
            self._previous = self._previous + group.async_run("offload")
