"""Bad inputs through the real CLI (`python -m chimed_ray ...`): each run exits non-zero with ONE
line on stderr naming the problem, no traceback, before Ray starts, and leaves the files of an
existing output directory as they were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD_DIALOGUE = '{"conversations": [{"from": "human", "value": "头痛怎么办"}, {"from": "gpt", "value": "多休息"}]}'


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "malformed.yaml").write_text("model:\n  path: [unclosed\n")
    (root / "bad.jsonl").write_text(GOOD_DIALOGUE + "\n" + GOOD_DIALOGUE + "\n" + '{"conversations": [oops\n')
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "notes.txt").write_text("no config.json, no weights\n")
    return root


CASES = {
    # name: (stage, args, what the one line must contain); {in}: inputs dir, {out}: output dir,
    # {model}: a real tiny HF checkpoint.
    "missing config file": ("sft", ["--config", "{in}/nope.yaml", "output_dir={out}"], ["nope.yaml", "not found"]),
    "malformed yaml": ("sft", ["--config", "{in}/malformed.yaml", "output_dir={out}"], ["malformed.yaml:3", "invalid YAML"]),
    "unknown key": ("sft", ["--config", "configs/sft/tiny.yaml", "output_dir={out}", "optim.lrate=1e-4"],
                    ["optim.lrate", "unknown key"]),
    "wrong type": ("sft", ["--config", "configs/sft/tiny.yaml", "output_dir={out}", "optim.micro_batch_size=many"],
                   ["optim.micro_batch_size", "expected an integer", "many"]),
    "malformed jsonl line": ("sft", ["--config", "configs/sft/tiny.yaml", "output_dir={out}", "model.path={model}",
                                     "data.train_files={in}/bad.jsonl"], ["bad.jsonl:3", "invalid JSON"]),
    "missing data file": ("pretrain", ["--config", "configs/pretrain/tiny.yaml", "output_dir={out}", "model.path={model}",
                                       "data.train_files={in}/missing.jsonl"], ["missing.jsonl", "not found"]),
    "model.path not a model": ("sft", ["--config", "configs/sft/tiny.yaml", "output_dir={out}",
                                       "model.path={in}/not_a_model"], ["model.path", "not_a_model", "not an HF"]),
    "serve non-model checkpoint": ("serve", ["--config", "configs/serve/tiny.yaml", "--checkpoint", "{in}/not_a_model"],
                                   ["not_a_model", "not an HF checkpoint"]),
    "eval non-checkpoint path": ("eval", ["--config", "configs/eval/tiny.yaml", "output_dir={out}",
                                          "checkpoints=[{{name: mine, path: {in}/not_a_model}}]"],
                                 ["not_a_model", "mine", "not an HF model"]),
    "ppo reward.path missing": ("ppo", ["--config", "configs/ppo/tiny.yaml", "output_dir={out}", "model.path={model}",
                                        "reward.path={in}/no_reward_model"], ["reward.path", "no_reward_model", "not found"]),
}


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_line(case, inputs, tiny_checkpoint, tmp_path):
    stage, args, expected = CASES[case]
    output = tmp_path / "existing_run"
    (output / "checkpoints").mkdir(parents=True)
    (output / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (output / "checkpoints" / "latest").write_text("step_000001")
    before = snapshot(output)
    argv = [arg.format(**{"in": inputs, "out": output, "model": tiny_checkpoint}) for arg in args]

    # An unreachable RAY_ADDRESS: a stage that got as far as starting Ray would fail differently.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "chimed_ray", stage, *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, check=False, timeout=300)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"chimed-ray {stage}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert snapshot(output) == before
    assert sorted(path.name for path in output.iterdir()) == ["checkpoints", "metrics.jsonl"]
