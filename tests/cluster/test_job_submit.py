"""A real Ray head (`ray start --head`) on localhost and stages submitted to it as Ray jobs, the way
users run them on a cluster: `ray job submit --working-dir <repo> -- chimed-ray pretrain ...`.

The head must not disturb any other Ray on the machine (the session's `ray_cluster` fixture, other
test runs): it gets its own free ports, its own `--temp-dir` and its own auth token, and is stopped
without `ray stop`, which kills every Ray process of the user on the machine. Instead `ray start`
runs in a new session (setsid); every process Ray spawns (GCS, raylet, dashboard, workers) inherits
that session id, so the teardown terminates exactly the processes of that session plus their
descendants (a job's driver runs in a session of its own under a worker of ours).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from chimed_ray.cluster import (
    WORKING_DIR_EXCLUDES,
    job_runtime_env,
    stage_command,
    submit_stage,
    wait_for_job,
)

REPO = Path(__file__).resolve().parents[2]
# The console script when chimed-ray is installed (`make test` installs it), else the module.
LAUNCHER = "chimed-ray" if shutil.which("chimed-ray") else f"{sys.executable} -m chimed_ray"
# The `ray` CLI of this interpreter's environment (not whatever `ray` a shim on PATH resolves to).
RAY_CLI = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"


@dataclass
class LocalHead:
    """A `ray start --head` of this test module, reached through its job API with its own token."""

    temp_dir: Path
    session_id: int
    address: str  # job API (dashboard) URL
    token: str
    env: dict[str, str]  # for `ray job ...` CLI calls against this head

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers)

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [RAY_CLI, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_processes(session_id: int) -> list[psutil.Process]:
    """Live processes of a session and their descendants (zombies are already dead)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return list(found.values())


def _stop_session(session_id: int, grace_s: float = 5.0) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after `grace_s`."""
    procs = _session_processes(session_id)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _wait_until_accepting_jobs(head: LocalHead, timeout_s: float = 180) -> None:
    """`ray start` returns before the dashboard agent registers; until then submissions fail with
    "No available agent to submit job". Submit a no-op job until one is accepted and finishes."""
    client, deadline = head.client(), time.monotonic() + timeout_s
    while True:
        try:
            probe = client.submit_job(entrypoint="true")
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert wait_for_job(client, probe, timeout_s=timeout_s, poll_s=0.5).name == "SUCCEEDED"


@pytest.fixture(scope="module")
def local_head():
    # A short path under /tmp: Ray's unix sockets live below it and must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="chimed-ray-head-", dir="/tmp"))
    token = secrets.token_hex(32)
    inherited = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH")  # would point at another cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    dashboard_port = _free_port()
    command = [
        RAY_CLI, "start", "--head", f"--port={_free_port()}", "--num-cpus=4", "--num-gpus=0",
        "--include-dashboard=true", f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command, env=env, cwd=temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    # The session leader's pid is the session id. It cannot be reused for another session while
    # any process of ours is alive (setsid refuses an id still in use as a process group).
    session_id = starter.pid
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, output
        address = f"http://127.0.0.1:{dashboard_port}"
        env["RAY_API_SERVER_ADDRESS"] = address
        head = LocalHead(temp_dir, session_id, address, token, env)
        _wait_until_accepting_jobs(head)
        yield head
    finally:
        _stop_session(session_id)
        leftovers = _session_processes(session_id)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"Ray processes of the test head survived: {leftovers}"


def test_stage_command_and_runtime_env():
    assert stage_command("sft", "configs/sft/tiny.yaml", ["optim.lr=1e-4", "note=two words"]) == (
        "chimed-ray sft --config configs/sft/tiny.yaml optim.lr=1e-4 'note=two words'"
    )
    assert stage_command("eval", launcher="python -m chimed_ray") == "python -m chimed_ray eval"
    with pytest.raises(ValueError, match="unknown stage 'finetune'"):
        stage_command("finetune")
    env = job_runtime_env(REPO, pip=["vllm"], env_vars={"A": "1"})
    assert env == {"working_dir": str(REPO), "excludes": WORKING_DIR_EXCLUDES, "pip": ["vllm"], "env_vars": {"A": "1"}}
    assert {"outputs/", ".git", ".cache"} <= set(WORKING_DIR_EXCLUDES)


def _tiny_corpus(directory: Path) -> tuple[Path, Path]:
    """A small Chinese medical text corpus and a BPE tokenizer trained on it, so the job does not
    depend on the bundled data or on a tokenizer cache."""
    from chimed_ray.models.tokenizer import train_tokenizer

    diseases = ["高血压", "糖尿病", "冠心病", "哮喘", "胃炎", "肺炎", "贫血", "甲状腺功能亢进"]
    advice = ["遵医嘱按时服药", "低盐低脂饮食", "规律运动并戒烟限酒", "定期复查相关指标"]
    documents = [
        f"{diseases[i % 8]}是常见的慢性疾病。第{i}位患者确诊{diseases[i % 8]}后，"
        f"医生建议其{advice[i % 4]}，并注意监测症状变化；如出现胸闷、气短或持续发热，应及时就医。"
        for i in range(240)
    ]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n\n".join(documents), encoding="utf-8")
    train_tokenizer([corpus], directory / "tokenizer", vocab_size=1000)
    return corpus, directory / "tokenizer"


@pytest.mark.slow
def test_pretrain_runs_as_a_ray_job(local_head, tmp_path):
    corpus, tokenizer = _tiny_corpus(tmp_path)
    output_dir = tmp_path / "pretrain"
    overrides = [
        f"output_dir={output_dir}", "optim.max_steps=2", "logging.save_every=0", "logging.eval_every=0",
        "logging.progress_bar=false", f"data.train_files=[{corpus}]", f"model.tokenizer_path={tokenizer}",
    ]
    entrypoint = stage_command("pretrain", "configs/pretrain/tiny.yaml", overrides, LAUNCHER)
    runtime_env = job_runtime_env(REPO)
    runtime_env.pop("working_dir")  # given as --working-dir, as users do
    submitted = local_head.ray(
        "job", "submit", "--no-wait", "--submission-id", "chimed-pretrain", "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env), "--", *shlex.split(entrypoint),
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    client = local_head.client()
    status = wait_for_job(client, "chimed-pretrain", timeout_s=600)  # ~40 s on an idle laptop
    logs = client.get_job_logs("chimed-pretrain")
    assert status.name == "SUCCEEDED", logs[-4000:]
    assert f"final checkpoint: {output_dir / 'final'}" in logs
    assert (output_dir / "final" / "config.json").is_file()
    assert (output_dir / "final" / "model.safetensors").is_file()

    # ...and through the CLI, as users read them back.
    status_line = local_head.ray("job", "status", "--log-style=record", "chimed-pretrain").stdout
    assert "Job 'chimed-pretrain' succeeded" in status_line, status_line
    assert "final checkpoint:" in local_head.ray("job", "logs", "chimed-pretrain").stdout

    # The uploaded working dir is the repo without history, outputs and caches.
    unpacked = local_head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    packages = [p for p in unpacked.glob("_ray_pkg_*") if p.is_dir()]
    assert packages and all((p / "chimed_ray" / "cli.py").is_file() for p in packages)
    left_out = (".git", ".cache", "outputs", ".pytest_cache")
    assert not any((p / name).exists() for p in packages for name in left_out)


def test_submit_stage_reports_a_bad_config(local_head):
    submission_id = submit_stage(
        local_head.address, "pretrain", "configs/pretrain/tiny.yaml", ["optim.lr=-1"],
        runtime_env=job_runtime_env(REPO), headers=local_head.headers, launcher=LAUNCHER,
    )
    client = local_head.client()
    assert wait_for_job(client, submission_id, timeout_s=300, poll_s=1).name == "FAILED"
    logs = client.get_job_logs(submission_id)
    assert "optim.lr" in logs and "must be positive" in logs, logs[-2000:]
