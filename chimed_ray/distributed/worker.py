"""Base classes of the actors in an `ActorGroup`.

`Worker` joins the group's process group and holds the tokenizer. `TrainableWorker` adds a
DeepSpeed engine (built with `trainers/engine.py`, like every Ray Train stage) and its checkpoint,
HF export and weight-gathering methods, shared by the policy and the critic.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

    from chimed_ray.config import OptimConfig, ScaleConfig

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
    precision: str = "fp32"
    seed: int = 0

    def causal_lm(self, tokenizer):
        from chimed_ray.models import build_causal_lm

        model = build_causal_lm(self.path, self.tiny, tokenizer, self.precision, self.trust_remote_code,
                                self.attn_implementation, self.seed)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def scalar_model(self, tokenizer):
        from chimed_ray.models.heads import build_scalar_model

        model = build_scalar_model(self.path, self.tiny, tokenizer, self.precision, self.trust_remote_code,
                                   self.attn_implementation, self.seed)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model


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


class TrainableWorker(Worker):
    """A rank holding a DeepSpeed engine (ZeRO shards gradients/optimizer state over the group)."""

    engine = None

    def init_engine(self, model: "torch.nn.Module", optim: "OptimConfig", scale: "ScaleConfig", total_steps: int) -> None:
        from chimed_ray.trainers.engine import initialize

        self.engine = initialize(model.to(self.device), optim, scale, total_steps)

    def full_state_dict(self) -> Optional[dict[str, "torch.Tensor"]]:
        """The full weights on rank 0 (None elsewhere). Collective: every rank must call it."""
        from chimed_ray.trainers.engine import gathered_state_dict

        state = gathered_state_dict(self.engine)
        # clone: under ZeRO-1/2 each weight is a view into one flat buffer, and pickling a view (Ray
        # does, to return it) writes its whole storage, i.e. the full model once per tensor.
        return None if state is None else {name: tensor.detach().cpu().clone() for name, tensor in state.items()}

    def save_checkpoint(self, directory: str) -> None:
        """Weights, optimizer, scheduler and step counter: every rank writes its shards."""
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG)

    def load_checkpoint(self, directory: str) -> None:
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
