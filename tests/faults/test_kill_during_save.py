"""A run killed while it saves leaves the last complete checkpoint loadable, and a half-written
one is never picked up: PPO's checkpoint writer (`ppo_state.save_checkpoint`) and the HF
checkpoint writer (`save_hf_checkpoint` through `atomic_directory`).

The PPO writer is driven by stand-in groups that write shard files the way DeepSpeed workers do
(no Ray needed); the kills are real SIGKILLs of a subprocess saving in a loop.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SHARDS, SHARD_BYTES = 4, 1_000_000

# Stand-in policy/critic groups: `save_checkpoint` writes SHARDS files filled with the step's byte.
FAKE_GROUPS = f'''
from pathlib import Path
from types import SimpleNamespace


class ShardWriter:
    def __init__(self, state, fail_after=None):
        self.state, self.fail_after = state, fail_after

    def async_run(self, method, path):
        path = Path(path)
        if method == "load_checkpoint":
            self.state["loaded"].append(path)
            return []
        path.mkdir(parents=True)
        for shard in range({SHARDS}):
            if shard == self.fail_after:
                raise RuntimeError("simulated crash in the middle of a save")
            (path / f"shard_{{shard}}.bin").write_bytes(bytes([self.state["step"] % 256]) * {SHARD_BYTES})
        return []


def fake_groups(state, fail_after=None):
    return SimpleNamespace(policy=ShardWriter(state, fail_after), critic=ShardWriter(state, fail_after))
'''

PPO_SAVER = FAKE_GROUPS + '''
import json, sys
from chimed_ray.distributed import group
from chimed_ray.trainers import ppo_state

group.gather = list  # the stand-in groups return no ObjectRefs
output = Path(sys.argv[1])
previous = ppo_state.latest_checkpoint(output)
start = json.loads((previous / ppo_state.STATE_FILE).read_text())["step"] if previous else 0
state = {"step": 0, "loaded": []}
groups = fake_groups(state)
for step in range(start + 1, start + 100_000):
    state["step"] = step
    ppo_state.save_checkpoint(groups, ppo_state.DriverState(step=step, prompt_position=4 * step), output, keep=2)
    print(step, flush=True)
'''

HF_SAVER = '''
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from chimed_ray.models import save_hf_checkpoint

source, target = sys.argv[1:]
model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
print("ready", flush=True)
for saves in range(1, 1_000_000):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    save_hf_checkpoint(model, tokenizer, target)
    print("saved", saves, flush=True)
'''


def namespace(code: str) -> SimpleNamespace:
    scope: dict = {}
    exec(compile(code, "fake_groups", "exec"), scope)
    return SimpleNamespace(**scope)


def assert_complete(directory: Path) -> int:
    """Every shard of a checkpoint is whole and from the step its driver state names."""
    from chimed_ray.trainers.ppo_state import STATE_FILE

    step = json.loads((directory / STATE_FILE).read_text())["step"]
    assert directory.name == f"step_{step:06d}"
    for role in ("policy", "critic"):
        shards = sorted((directory / role).glob("shard_*.bin"))
        assert len(shards) == SHARDS, (directory, role, shards)
        for shard in shards:
            assert shard.read_bytes() == bytes([step % 256]) * SHARD_BYTES, shard
    return step


def assert_resumable(output: Path) -> int:
    """The checkpoint resume would pick is complete and restores; no visible `step_*` is half."""
    from chimed_ray.trainers import ppo_state

    latest = ppo_state.latest_checkpoint(output)
    assert latest is not None and not latest.name.startswith(".")
    for directory in (output / "checkpoints").glob("step_*"):
        assert_complete(directory)
    state = {"step": 0, "loaded": []}
    restored = ppo_state.restore_checkpoint(namespace(FAKE_GROUPS).fake_groups(state), latest)
    assert state["loaded"] == [latest / "policy", latest / "critic"]
    assert restored.step == assert_complete(latest) and restored.prompt_position == 4 * restored.step
    return restored.step


def test_a_save_that_crashes_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from chimed_ray.distributed import group
    from chimed_ray.trainers import ppo_state

    monkeypatch.setattr(group, "gather", list)
    fakes = namespace(FAKE_GROUPS)
    state = {"step": 1, "loaded": []}
    ppo_state.save_checkpoint(fakes.fake_groups(state), ppo_state.DriverState(step=1, prompt_position=4), tmp_path, 2)

    state["step"] = 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        ppo_state.save_checkpoint(fakes.fake_groups(state, fail_after=2), ppo_state.DriverState(step=2), tmp_path, 2)

    root = tmp_path / "checkpoints"
    assert sorted(path.name for path in root.iterdir()) == ["latest", "step_000001"]  # no temporary left
    assert (root / "latest").read_text() == "step_000001"
    assert assert_resumable(tmp_path) == 1


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    from chimed_ray.trainers import ppo_state

    root = tmp_path / "checkpoints"
    for name in ("step_000001", "step_000002", ".step_000003.tmp-x", "step_000004"):
        (root / name).mkdir(parents=True)
    for name in ("step_000001", "step_000002", ".step_000003.tmp-x"):
        (root / name / ppo_state.STATE_FILE).write_text("{}")
    (root / "latest").write_text("step_000009")  # names a checkpoint that is gone
    assert ppo_state.latest_checkpoint(tmp_path) == root / "step_000002"


def test_sigkill_during_ppo_saves_never_loses_the_last_checkpoint(tmp_path):
    output, rng, last_step = tmp_path / "ppo", random.Random(0), 0
    for _ in range(6):
        saver = subprocess.Popen([sys.executable, "-c", PPO_SAVER, str(output)], stdout=subprocess.PIPE, text=True)
        printed = int(saver.stdout.readline())  # one save done in this process
        time.sleep(rng.uniform(0.0, 0.3))
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=30)
        assert printed > last_step  # each run resumed after the previous run's checkpoint
        last_step = assert_resumable(output)
        assert last_step >= printed


def whole_saves_since(source: Path, target: Path) -> int:
    """How many `add_(0.01)` saves the checkpoint at `target` is past `source`; fails unless every
    parameter moved by the same number of steps (one whole save, never a mix of two)."""
    from transformers import AutoModelForCausalLM

    original = dict(AutoModelForCausalLM.from_pretrained(source).named_parameters())
    saved = dict(AutoModelForCausalLM.from_pretrained(target).named_parameters())
    shifts = {name: round(float((saved[name] - original[name]).detach().mean()) / 0.01) for name in original}
    assert len(set(shifts.values())) == 1, shifts
    (steps,) = set(shifts.values())
    for name, parameter in original.items():
        assert torch.allclose(saved[name], parameter + 0.01 * steps, atol=1e-4), name
    return steps


def next_save(saver: subprocess.Popen) -> int:
    """The number of the next save the saver reports as finished (other output is skipped)."""
    for line in saver.stdout:
        if line.startswith("saved "):
            return int(line.split()[1])
    raise AssertionError("the saver exited before finishing a save")


def test_sigkill_during_hf_saves_keeps_the_existing_checkpoint_loadable(tiny_checkpoint, tmp_path):
    target, rng = tmp_path / "final", random.Random(0)
    shutil.copytree(tiny_checkpoint, target)
    for _ in range(3):
        saver = subprocess.Popen([sys.executable, "-c", HF_SAVER, str(tiny_checkpoint), str(target)],
                                 stdout=subprocess.PIPE, text=True)
        finished = next_save(saver)  # one save is complete
        time.sleep(rng.uniform(0.0, 0.5))
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=30)
        finished = max([finished] + [int(line.split()[1]) for line in saver.stdout if line.startswith("saved ")])
        # Killed at any moment, the checkpoint is the last finished save or the one after it,
        # whole (each saver starts again from the source, adding 0.01 per save).
        assert whole_saves_since(tiny_checkpoint, target) in (finished, finished + 1)
