"""Serving fixtures: a second tiny checkpoint and one running app per test module that needs it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
API_KEY = "test-key"


@pytest.fixture(scope="session")
def second_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """Same tiny shape as `tiny_checkpoint`, different initialisation (seed 1): a second model."""
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, save_hf_checkpoint

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=1)
    return save_hf_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt-b") / "tiny-b")


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process engines use one intra-op thread, as Serve replicas with num_cpus=1 do (Ray sets
    OMP_NUM_THREADS=1 there); two threads on a busy 2-core machine spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running app: OpenAI base URL, the server root, its API key and model names."""

    url: str
    root: str
    api_key: str
    models: tuple[str, str]
    port: int
    printed: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def serve_overrides(first: Path, second: Path, port: int) -> list[str]:
    """Two models on the tiny serve config; the second one is squeezed so overload is reachable."""
    models = [
        {"name": "tiny", "path": str(first)},
        {"name": "tiny-b", "path": str(second),
         "deployment": {"max_ongoing_requests": 1, "max_queued_requests": 1, "num_cpus": 1}},
    ]
    return [
        f"models={json.dumps(models)}",
        f"http.port={port}",
        f"http.api_key={API_KEY}",
        "http.app_name=chimed-ray-test",
        "engine.default_max_tokens=16",
        "engine.max_n=4",
        "batching.max_batch_size=8",
    ]


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_checkpoint, second_checkpoint):
    """The app from configs/serve/tiny.yaml with both checkpoints, started once per module through
    the CLI (`chimed-ray serve ... block=false`, which calls `start_server`)."""
    from chimed_ray.serving import shutdown_server
    from chimed_ray.serving.run import main

    port = free_port()
    overrides = serve_overrides(tiny_checkpoint, second_checkpoint, port)
    argv = ["--config", str(CONFIGS / "serve" / "tiny.yaml"), *overrides, "block=false"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    url = re.search(r" at (http://\S+/v1)", printed.getvalue()).group(1)
    yield Served(url=url, root=url.removesuffix("/v1"), api_key=API_KEY, models=("tiny", "tiny-b"), port=port,
                 printed=printed.getvalue())
    shutdown_server("chimed-ray-test")

