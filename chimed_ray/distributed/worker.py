"""Base classes of the actors in an `ActorGroup`.

`Worker` joins the group's process group, holds the tokenizer, and can take its models off the
device between phases (`offload`/`reload`, see `distributed/offload.py`). `TrainableWorker` adds a
DeepSpeed engine (built with `trainers/engine.py`, like every Ray Train stage) and its checkpoint,
HF export and weight-gathering methods, shared by the policy and the critic.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.distributed.offload import DeviceStates, States

from chimed_ray.config import TinyModelConfig

CHECKPOINT_TAG = "state"


@dataclass
class ModelSpec:
    """Where a role's model comes from: an HF directory, or a fresh tiny model when `path` is empty."""

    path: str = ""
    tokenizer_path: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # the dtype the weights load in: the run's training dtype
    seed: int = 0
    # The DeepSpeed config the model is built for (None: a plain replica). Under ZeRO-3 the model is
    # built already partitioned over the group; a frozen role then runs as a ZeRO-3 inference engine.
    deepspeed: Optional[dict[str, Any]] = None

    @property
    def zero3(self) -> bool:
        from chimed_ray.trainers.engine import is_zero3

        return is_zero3(self.deepspeed)

    def causal_lm(self, tokenizer):
        from chimed_ray.models import build_causal_lm
        from chimed_ray.trainers.engine import sharded_construction

        with sharded_construction(self.deepspeed):
            model = build_causal_lm(self.path, self.tiny, tokenizer, self.precision, self.trust_remote_code,
                                    self.attn_implementation, self.seed)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def scalar_model(self, tokenizer):
        from chimed_ray.models.heads import build_scalar_model
        from chimed_ray.trainers.engine import sharded_construction

        with sharded_construction(self.deepspeed):
            model = build_scalar_model(self.path, self.tiny, tokenizer, self.precision, self.trust_remote_code,
                                       self.attn_implementation, self.seed)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def frozen(self, model: "torch.nn.Module", device: "torch.device"):
        """A built frozen model ready for no-grad forwards: a ZeRO-3 inference engine when the spec
        says so (its forward fires the gather hooks), else a replica on `device`."""
        model.requires_grad_(False)
        if self.zero3:
            from chimed_ray.trainers.engine import initialize_frozen

            return initialize_frozen(model, self.deepspeed)
        return model.to(device).eval()


class Worker:
    """One rank of an actor group."""

    rank: int = 0
    world_size: int = 1

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process group's rendezvous."""
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup_distributed(self, rank: int, world_size: int, address: tuple[str, int], backend: str) -> None:
        """Join the group's process group at rank 0's `address` (DeepSpeed uses the default group)."""
        import torch
        import torch.distributed as dist

        master_addr, master_port = address
        self.rank, self.world_size = rank, world_size
        os.environ.update({
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        })
        if backend == "nccl":
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so it is always device 0 here.
            torch.cuda.set_device(0)
        self.device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                                world_size=world_size, timeout=timedelta(minutes=30))

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> None:
        from chimed_ray.models import load_tokenizer

        self.tokenizer = load_tokenizer(path, trust_remote_code)

    def ping(self) -> int:
        return self.rank

    # ----------------------------------------------------------------- offload / reload (colocation)
    _states: Optional["DeviceStates"] = None

    _sleeping = False

    def device_states(self) -> Optional["DeviceStates"]:
        """What this rank holds on its device (None: nothing to offload, e.g. a reward function).
        By default the model of a separate HF rollout engine (`self.engine.model`)."""
        from chimed_ray.distributed.offload import module_states

        model = getattr(getattr(self, "engine", None), "model", None)
        return module_states(model, self.device) if model is not None else None

    def _vllm(self):
        engine = getattr(self, "engine", None)
        return engine if hasattr(engine, "llm") else None

    def offload(self, *after: Any) -> int:
        """Take this rank's models (and optimizer states) off the device; returns the bytes moved.
        `after`: ObjectRefs Ray resolves first (the previous turn's offload on a shared device)."""
        from chimed_ray.distributed.offload import sleep_vllm

        if self._vllm() is not None:
            if not self._sleeping:
                sleep_vllm(self._vllm())
                self._sleeping = True
            return 0
        self._refresh_states()
        return self._states.offload() if self._states is not None else 0

    def _refresh_states(self) -> None:
        """Collect the states anew whenever all are on the device (optimizer moments appear at the
        first step; a checkpoint load may replace buffers); never while some are offloaded."""
        if self._states is None or self._states.is_resident("all"):
            self._states = self.device_states()

    def reload(self, states: "States" = "all", *after: Any) -> int:
        """Bring back the weights (for forwards) or `all` states (for training); returns the bytes."""
        from chimed_ray.distributed.offload import wake_vllm

        if self._vllm() is not None:
            if self._sleeping:
                wake_vllm(self._vllm())
                self._sleeping = False
            return 0
        return self._states.reload(states) if self._states is not None else 0

    def ensure_on_device(self, states: "States") -> None:
        """Reload if a call arrives outside its turn (correct, if not memory-disciplined)."""
        if self._states is not None and not self._states.is_resident(states):
            self._states.reload(states)

    def resident_bytes(self) -> dict[str, int]:
        """Bytes of weights and of optimizer states now on the device (0 when offloaded), and of
        their host copies."""
        self._refresh_states()
        return self._states.resident_bytes() if self._states is not None else {"weights": 0, "optimizer": 0, "host": 0}

    def states_digest(self) -> str:
        """A hash of every offloadable state (to check that a round trip is bit-identical)."""
        self._refresh_states()
        return self._states.digest() if self._states is not None else ""


class TrainableWorker(Worker):
    """A rank holding a DeepSpeed engine (ZeRO shards gradients/optimizer state over the group)."""

    engine = None

    def init_engine(self, model: "torch.nn.Module", optim: "OptimConfig", scale: "ScaleConfig", total_steps: int) -> None:
        from chimed_ray.trainers.engine import initialize

        # A ZeRO-3 model built partitioned already has its shards on this rank's device.
        on_device = model if scale.zero_stage == 3 else model.to(self.device)
        self.engine = initialize(on_device, optim, scale, total_steps)

    def device_states(self) -> Optional["DeviceStates"]:
        from chimed_ray.distributed.offload import module_states

        return module_states(self.engine.module, self.device, self.engine.optimizer)

    def full_state_dict(self) -> Optional[dict[str, "torch.Tensor"]]:
        """The full weights on rank 0 (None elsewhere). Collective: every rank must call it."""
        from chimed_ray.trainers.engine import gathered_state_dict

        self.ensure_on_device("weights")
        state = gathered_state_dict(self.engine)
        # clone: under ZeRO-1/2 each weight is a view into one flat buffer, and pickling a view (Ray
        # does, to return it) writes its whole storage, i.e. the full model once per tensor.
        return None if state is None else {name: tensor.detach().cpu().clone() for name, tensor in state.items()}

    def save_checkpoint(self, directory: str) -> None:
        """Weights, optimizer, scheduler and step counter: every rank writes its shards."""
        self.ensure_on_device("all")
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG)

    def load_checkpoint(self, directory: str) -> None:
        self.ensure_on_device("all")
        path, _ = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint with tag {CHECKPOINT_TAG!r}")

    def save_hf(self, directory: str) -> Optional[str]:
        """Save the model as an HF directory (rank 0 writes; every rank joins the gather)."""
        from chimed_ray.models import save_hf_checkpoint

        state = self.full_state_dict()
        if self.rank != 0:
            return None
        return str(save_hf_checkpoint(self.engine.module, self.tokenizer, Path(directory), state_dict=state))

    def optimizer_steps(self) -> int:
        return int(self.engine.global_steps)

    def _backward_step(self, loss: "torch.Tensor") -> bool:
        """Backward and (at the accumulation boundary) an optimizer step; True if it stepped."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        return boundary


def mean_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """Average metric dicts (per micro-batch, or per rank) key by key."""
    keys = sorted({key for record in records for key in record})
    return {key: sum(r[key] for r in records if key in r) / max(1, sum(key in r for r in records)) for key in keys}
