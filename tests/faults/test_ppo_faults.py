"""A PPO role actor killed mid-run: the real CLI fails with one line naming the role and the
checkpoint to resume from, and `resume=true` continues from that checkpoint to the end.

The CLI runs as a subprocess joined to the test session's Ray cluster (`RAY_ADDRESS`), so the
kill is real (`ray.kill` of the reference actor, through the `fault.*` hook right after the
checkpoint of step 2) and no second cluster has to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ERROR_PREFIX = "chimed-ray ppo: error:"


def run_cli(args: list[str], ray_address: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.run([sys.executable, "-m", "chimed_ray", "ppo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


def test_killed_reference_actor_fails_clearly_then_resume_finishes(ray_cluster, tiny_checkpoint, tmp_path):
    output = tmp_path / "ppo"
    args = [
        "--config", "configs/ppo/tiny.yaml", f"output_dir={output}", f"model.path={tiny_checkpoint}",
        "reward.path=", "reward.function=chimed_ray.rollout.rule_rewards:token_parity",
        "total_steps=3", "logging.save_every=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=8", "rollout.max_prompt_length=64", "algorithm.mini_batch_size=4",
        "algorithm.ppo_epochs=1", "logging.progress_bar=false", "logging.tensorboard=false",
        "fault.kill_at_step=2", "fault.role=reference",
    ]
    address = ray_cluster.get_runtime_context().gcs_address

    failed = run_cli(args, address)
    assert failed.returncode == 1, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    message = errors[0]
    print(message)
    assert "reference rank 0" in message and "resume=true" in message and "step_000002" in message, message
    checkpoints = output / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000002"
    assert not (output / "final").exists()

    resumed = run_cli(args + ["resume=true"], address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [1, 2, 3]
    assert steps.count(3) >= 1 and steps.count(1) == steps.count(3)  # step 3 logged once, after resume
    assert (checkpoints / "latest").read_text() == "step_000003"
    state = json.loads((checkpoints / "step_000003" / "driver_state.json").read_text())
    assert state["step"] == 3 and state["prompt_position"] == 6
    assert (output / "final" / "config.json").is_file()
