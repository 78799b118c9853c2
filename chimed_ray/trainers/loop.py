"""The one training loop every Ray Train stage runs on each worker.

DeepSpeed engine, deterministic data sharding, gradient accumulation, periodic evaluation,
checkpoints reported through `ray.train.report`, and exact resume (weights, optimizer, scheduler,
step and data position) from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from chimed_ray.trainers.checkpoints import TrainState, restore_checkpoint, save_checkpoint
from chimed_ray.trainers.task import StageTask, load_task
from chimed_ray.utils.files import InputError


def too_few_examples(examples: int, workers: int, micro_batch_size: int) -> str:
    """The one line for a dataset that cannot fill one micro-batch on every worker."""
    return (f"{examples} training examples are too few for {workers} workers x micro_batch_size {micro_batch_size}; "
            "add data, or lower scale.num_workers or optim.micro_batch_size")

class ShardedBatches:
    """Deterministic per-epoch shuffling; rank r takes every world-th example, equal counts on all
    ranks so that collective calls stay in step."""

    def __init__(self, num_examples: int, micro_batch_size: int, rank: int, world: int, seed: int) -> None:
        self.num_examples, self.micro_batch_size = num_examples, micro_batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self.per_rank = num_examples // world
        self.micro_batches_per_epoch = self.per_rank // micro_batch_size
        if self.micro_batches_per_epoch == 0:
            raise InputError(too_few_examples(num_examples, world, micro_batch_size))

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        order = list(range(self.num_examples))
        random.Random(self.seed + epoch).shuffle(order)
        mine = order[self.rank :: self.world][: self.per_rank]
        size = self.micro_batch_size
        for index in range(start, self.micro_batches_per_epoch):
            yield mine[index * size : (index + 1) * size]


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def evaluate(task: StageTask, engine, examples: Sequence[Any], tokenizer, batch_size: int, device) -> dict[str, float]:
    """Weighted mean of the task's metrics over `examples`, sharded over ranks."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    mine = list(examples)[rank::world]
    totals: dict[str, float] = {}
    weight_sum = 0.0
    engine.eval()
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = task.collate(mine[start : start + batch_size], tokenizer).to(device)
            _, metrics, weight = task.compute_loss(engine, batch)
            weight_sum += weight
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * weight
    engine.train()
    keys = sorted(totals) if totals else []
    # Ranks may see no eval examples; agree on the key set through rank 0's count of keys.
    reduced = _all_reduce_sum([weight_sum] + [totals.get(k, 0.0) for k in keys], device)
    return {f"eval/{k}": v / max(reduced[0], 1e-9) for k, v in zip(keys, reduced[1:])}


def _maybe_inject_fault(fault, step: int) -> None:
    """Kill this worker process (as a crash would) if the config asks for it at this step."""
    import os

    rank = dist.get_rank() if dist.is_initialized() else 0
    if fault.kill_at_step and step == fault.kill_at_step and rank == fault.rank:
        marker = Path(fault.marker)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"killed at step {step}\n")
            os._exit(1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: `loop_config` holds the task name and the stage config as a dict.

    An InputError raised here (bad data, too few examples) ends the run without a retry
    (`trainers/fatal_errors.py`)."""
    import ray.train
    import ray.train.torch

    from chimed_ray.config import from_dict
    from chimed_ray.models import load_tokenizer
    from chimed_ray.utils.tracking import RunTracker

    task = load_task(loop_config["task"])
    config = from_dict(task.config_cls, loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.optim.seed)

    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path, config.model.trust_remote_code)
    train_examples, eval_examples = task.build_examples(config, tokenizer)
    optim = config.optim
    batches = ShardedBatches(len(train_examples), optim.micro_batch_size, rank, world, optim.seed)
    steps_per_epoch = max(1, batches.micro_batches_per_epoch // optim.gradient_accumulation_steps)
    total_steps = optim.max_steps or optim.epochs * steps_per_epoch

    engine, build_peak_mb = build_engine(task, config, tokenizer, total_steps, device)
    state = restore_checkpoint(engine, config.storage_path, config.run_name, world) or TrainState()
    tracker = RunTracker(
        config.output_dir, total_steps, state.step, active=rank == 0,
        tensorboard=config.logging.tensorboard, progress_bar=config.logging.progress_bar,
        description=loop_config["task"], tracking=config.logging, run_config=loop_config["config"],
        run_name=config.run_name,
    )
    engine.train()  # from_pretrained returns eval mode; dropout must be on from the first step
    # Logged with the first train metrics, so readers find train metrics on every logged step.
    first_log = {} if build_peak_mb is None else {"memory/model_build_peak_mb": build_peak_mb}
    _run_steps(task, engine, tokenizer, config, batches, train_examples, eval_examples, state, total_steps, tracker,
               device, first_log)
    tracker.close()


def build_engine(task: StageTask, config, tokenizer, total_steps: int, device) -> tuple[Any, Optional[float]]:
    """The stage's model in a DeepSpeed engine, and the largest host-memory increase any rank saw
    while building the model (MiB; None without /proc). Under ZeRO-3 the model is built already
    partitioned (`sharded_construction`), so a rank never holds it whole."""
    from chimed_ray.trainers import engine as ds_engine
    from chimed_ray.utils.memory import PeakRSS

    ds_config = ds_engine.deepspeed_config(config.optim, config.scale)
    with ds_engine.sharded_construction(ds_config), PeakRSS() as peak:  # DeepSpeed's own set-up not counted
        model = task.build_model(config, tokenizer)
    if not ds_engine.is_zero3(ds_config):  # a partitioned model already has its shards on `device`
        model = model.to(device)
    build_peak_mb = None
    if peak.increase_mb is not None:
        build_peak_mb = peak.increase_mb
        if dist.is_initialized():
            tensor = torch.tensor([peak.increase_mb], dtype=torch.float64, device=device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            build_peak_mb = float(tensor.item())
    return ds_engine.initialize(model, config.optim, config.scale, total_steps), build_peak_mb


def _run_steps(task, engine, tokenizer, config, batches, train_examples, eval_examples, state, total_steps, tracker, device,
               first_log: dict[str, float]) -> None:
    log, optim = config.logging, config.optim
    window: dict[str, float] = {}
    window_weight, window_tokens, window_start = 0.0, 0.0, time.perf_counter()
    last_metrics: dict[str, float] = {}
    while state.step < total_steps:
        for indices in batches.epoch_batches(state.epoch, state.micro_step):
            batch = task.collate([train_examples[i] for i in indices], tokenizer).to(device)
            loss, metrics, weight = task.compute_loss(engine, batch)
            engine.backward(loss)
            engine.step()
            state.micro_step += 1
            window_weight += weight
            window_tokens += float(batch.attention_mask.sum()) if hasattr(batch, "attention_mask") else weight
            for key, value in metrics.items():
                window[key] = window.get(key, 0.0) + value * weight
            if engine.global_steps == state.step:
                continue  # still accumulating gradients
            state.step = engine.global_steps
            summed = _all_reduce_sum([window_weight, window_tokens] + [window[k] for k in sorted(window)], device)
            elapsed = time.perf_counter() - window_start
            state.tokens += summed[1]
            last_metrics = {f"train/{k}": v / max(summed[0], 1e-9) for k, v in zip(sorted(window), summed[2:])}
            last_metrics.update({"train/lr": engine.get_lr()[0], "train/tokens_per_s": summed[1] / max(elapsed, 1e-9), "train/epoch": state.epoch})
            if state.step % log.log_every == 0 or state.step == total_steps:
                tracker.log(state.step, {**first_log, **last_metrics})
                first_log = {}
            window, window_weight, window_tokens, window_start = {}, 0.0, 0.0, time.perf_counter()
            final = state.step >= total_steps
            if eval_examples and (final or (log.eval_every and state.step % log.eval_every == 0)):
                eval_metrics = evaluate(task, engine, eval_examples, tokenizer, optim.micro_batch_size, device)
                tracker.log(state.step, eval_metrics)
                last_metrics.update(eval_metrics)
            if final or (log.save_every and state.step % log.save_every == 0):
                # Data position after this step: the next micro-batch of this epoch.
                save_checkpoint(task, engine, tokenizer, state, last_metrics, dist.get_rank() if dist.is_initialized() else 0)
                _maybe_inject_fault(config.fault, state.step)
            if final:
                return
        state.epoch += 1
        state.micro_step = 0
