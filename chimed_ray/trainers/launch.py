"""Driver side of every Ray Train stage: connect to Ray, check the cluster, start a TorchTrainer
running the shared loop, then publish the final HF checkpoint and the loss curve."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from chimed_ray.config import TrainStageConfig, check_cluster_fits, dump_config, to_dict
from chimed_ray.planning.check import check_memory
from chimed_ray.trainers.checkpoints import HF_DIR
from chimed_ray.trainers.loop import too_few_examples, train_loop_per_worker
from chimed_ray.trainers.task import load_task
from chimed_ray.utils.files import InputError, absolute_path, atomic_directory
from chimed_ray.utils.tracking import attach_artifacts


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start a local one.
    A dead recorded cluster fails in seconds with one line instead of hanging in `ray.init`."""
    import ray

    from chimed_ray.cluster.address import check_ray_address

    # Set in the environment, not in ray.init's runtime_env: a job's own runtime_env would
    # otherwise fail to merge with ours under `ray job submit`.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        check_ray_address()
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)


def resolve_paths(config: TrainStageConfig) -> TrainStageConfig:
    """The config with output, storage, model and data paths made absolute."""
    output_dir = absolute_path(config.output_dir)
    data = replace(
        config.data,
        train_files=[absolute_path(p) if Path(p).exists() else p for p in config.data.train_files],
        eval_files=[absolute_path(p) if Path(p).exists() else p for p in config.data.eval_files],
    )
    model = replace(
        config.model,
        path=absolute_path(config.model.path) if config.model.path else "",
        tokenizer_path=absolute_path(config.model.tokenizer_path) if config.model.tokenizer_path else "",
    )
    storage = config.storage_path or str(Path(output_dir) / "ray")
    return replace(config, output_dir=output_dir, storage_path=absolute_path(storage), data=data, model=model)


def check_inputs(task_name: str, config: TrainStageConfig) -> None:
    """Fail on the driver, before any worker starts, for missing data files, a malformed record
    (named as file:line), too few examples for the workers, or a model directory that is not an
    HF checkpoint (naming the stage that makes it). Workers would hit the same errors only after
    Ray started, buried in its logs."""
    from chimed_ray.data.splits import check_split
    from chimed_ray.models import require_hf_checkpoint
    from chimed_ray.trainers.task import DATA_KINDS

    if config.model.path:
        require_hf_checkpoint(config.model.path, "model.path")
    kind = DATA_KINDS[task_name]
    examples = check_split(config.data, kind)
    needed = config.scale.num_workers * config.optim.micro_batch_size
    # Pretraining packs documents into blocks, so its record count does not bound its examples.
    if examples is not None and kind != "pretrain" and examples < needed:
        raise InputError(too_few_examples(examples, config.scale.num_workers, config.optim.micro_batch_size))


def _prepare_run_dir(config: TrainStageConfig) -> None:
    """Ray Train V2 resumes automatically from a run directory with the same name. Without
    `resume=true` an earlier run is moved aside (never deleted) so this one starts fresh."""
    if "://" in config.storage_path:
        return
    run_dir = Path(config.storage_path) / config.run_name
    if run_dir.exists() and not config.resume:
        aside = run_dir.with_name(f"{config.run_name}.{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        metrics = Path(config.output_dir) / "metrics.jsonl"
        if metrics.exists():
            metrics.rename(aside / "metrics.jsonl")


def run_ray_train(task_name: str, config: TrainStageConfig) -> Path:
    """Train with Ray Train; returns `<output_dir>/final`, the HF checkpoint of the last step."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from chimed_ray.trainers.fatal_errors import UserErrorsAreFatal, user_error

    config = resolve_paths(config)
    check_memory(task_name, config)  # refuses, in one line, a GPU config that cannot fit
    check_inputs(task_name, config)
    ensure_ray()
    if config.scale.check_cluster:
        check_cluster_fits(config.scale)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(config)
    dump_config(config, Path(config.output_dir) / "config.yaml")
    scale = config.scale
    resources = {"CPU": scale.cpus_per_worker}
    if scale.use_gpu:
        resources["GPU"] = scale.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task_name, "config": to_dict(config)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scale.num_workers, use_gpu=scale.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if scale.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=config.run_name,
            storage_path=config.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.logging.keep_checkpoints),
            callbacks=[UserErrorsAreFatal()],
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        message = user_error(exc)
        if message is None:
            raise
        raise InputError(message) from None  # found by a worker and not retried: one line
    if result.checkpoint is None:
        raise RuntimeError(f"{task_name}: training finished without a checkpoint")
    final = Path(config.output_dir) / "final"
    with result.checkpoint.as_directory() as directory, atomic_directory(final) as tmp:
        shutil.copytree(Path(directory) / HF_DIR, tmp, dirs_exist_ok=True)
    attach_artifacts(config.output_dir, final, config.logging)  # the rank-0 worker's MLflow run, when asked
    _plot(task_name, config)
    print(f"[chimed-ray {task_name}] final checkpoint: {final}", flush=True)
    return final


def _plot(task_name: str, config: TrainStageConfig) -> None:
    from chimed_ray.utils.tracking import plot_curves

    task = load_task(task_name)
    png = plot_curves(Path(config.output_dir) / "metrics.jsonl", Path(config.output_dir) / "loss_curve.png", task.plot_keys, title=f"{task_name}: {config.run_name}")
    if png is not None:
        print(f"[chimed-ray {task_name}] loss curve: {png}", flush=True)
