"""Run stages on a Ray cluster: `submit_stage` sends `chimed-ray <stage> --config ... key=value` to
a cluster's job API, as `ray job submit --working-dir . -- chimed-ray ...` does, and `wait_for_job`
polls it."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Where the image of cluster/README.md puts the repo; commands in manifests name configs under it.
IMAGE_CODE_ROOT = "/home/ray/chimed-ray"
# Never shipped with `--working-dir`: run outputs, caches and history can be gigabytes.
WORKING_DIR_EXCLUDES = ["outputs/", ".git", ".cache", ".pytest_cache", ".benchmarks", "**/__pycache__"]
# (vCPUs, GPUs) of the instance types the launcher files use. Ray only looks them up with cloud
# credentials, so node types declare `resources` and this table keeps those honest.
INSTANCE_SHAPES = {
    "m5.4xlarge": (16, 0), "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8),
    "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
    "n2-standard-16": (16, 0), "a2-highgpu-1g": (12, 1), "a2-highgpu-4g": (48, 4),
    "a2-highgpu-8g": (96, 8), "a2-ultragpu-8g": (96, 8), "a3-highgpu-8g": (208, 8),
}
# Config keys that hold file paths read or written on the cluster.
PATH_KEYS = {
    "output_dir", "storage_path", "path", "tokenizer_path", "train_files", "eval_files", "few_shot_files", "scales_file",
}
WRITTEN_KEYS = {"output_dir", "storage_path"}
_COMMAND = re.compile(r"(?:chimed-ray|python -m chimed_ray)\s+([a-z-]+)\s+(?:--config|-c)\s+(\S+)")


# --- submitting -------------------------------------------------------------------------------


def stage_command(
    stage: str, config: str | None = None, overrides: Sequence[str] = (), launcher: str = "chimed-ray"
) -> str:
    """The shell command of a stage, e.g. `chimed-ray sft --config configs/sft/tiny.yaml a.b=1`."""
    from chimed_ray.cli import STAGES

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    words = [*shlex.split(launcher), stage, *(["--config", config] if config else []), *overrides]
    return shlex.join(words)


def job_runtime_env(
    working_dir: str | Path = ".", pip: Sequence[str] = (), env_vars: dict[str, str] | None = None
) -> dict[str, Any]:
    """runtime_env shipping the repo at `working_dir` (minus outputs and caches) to the job.

    `pip` adds packages on top of what the nodes have; chimed-ray itself comes from the node setup
    (or image), and the shipped code takes precedence over it on the driver and every worker.
    """
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}
    if pip:
        env["pip"] = list(pip)
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def submit_stage(
    address: str,
    stage: str,
    config: str | None = None,
    overrides: Sequence[str] = (),
    *,
    runtime_env: dict[str, Any] | None = None,
    submission_id: str | None = None,
    headers: dict[str, str] | None = None,
    launcher: str = "chimed-ray",
) -> str:
    """Submit a stage as a Ray job to the cluster whose dashboard is at `address`; returns its id.

    Args:
        address: job API address, e.g. `http://127.0.0.1:8265`.
        runtime_env: defaults to `job_runtime_env(".")` (the current directory, i.e. the repo).
        headers: extra HTTP headers, e.g. `{"Authorization": "Bearer <token>"}` for token auth.
        launcher: `chimed-ray`, or `python -m chimed_ray` where the console script is not installed.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers=headers)
    return client.submit_job(
        entrypoint=stage_command(stage, config, overrides, launcher),
        runtime_env=runtime_env if runtime_env is not None else job_runtime_env("."),
        submission_id=submission_id,
    )


def wait_for_job(client: Any, submission_id: str, timeout_s: float = 3600.0, poll_s: float = 2.0) -> Any:
    """Poll a `JobSubmissionClient` until the job ends; returns its final `JobStatus`."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(submission_id)
        if status.is_terminal():
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {submission_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
