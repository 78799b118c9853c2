"""The pipeline's serve step calls its own server with the key the server was built with
(`http.api_key`, else `$CHIMED_RAY_API_KEY`), and stops the server however the call ends
(issue 12, item 15). Ray Serve and the OpenAI client are stood in for."""

from __future__ import annotations

import pytest


class FakeOpenAI:
    keys: list[str] = []

    def __init__(self, base_url: str, api_key: str) -> None:
        FakeOpenAI.keys.append(api_key)
        self.chat = self
        self.completions = self

    def create(self, **_):
        raise RuntimeError("401 invalid_api_key")  # what a wrong key gets from the server


@pytest.fixture
def served(monkeypatch):
    import openai

    from chimed_ray.serving import app

    events: list[str] = []
    monkeypatch.setattr(app, "start_server", lambda config: events.append("start") or "http://127.0.0.1:1/v1")
    monkeypatch.setattr(app, "shutdown_server", lambda name: events.append(f"shutdown {name}"))
    monkeypatch.setattr(openai, "OpenAI", FakeOpenAI)
    FakeOpenAI.keys = []
    return events


def serve_step(*overrides: str):
    from chimed_ray.config import load_config
    from chimed_ray.config.pipeline import PipelineConfig
    from chimed_ray.config.serve import ServeConfig
    from chimed_ray.pipeline import _serve

    config = load_config(ServeConfig, None, ["models=[{name: m, path: /nowhere}]", *overrides])
    return lambda: _serve(config, load_config(PipelineConfig, None, []))


def test_serve_step_uses_the_env_key_and_shuts_down_when_the_call_fails(served, monkeypatch):
    monkeypatch.setenv("CHIMED_RAY_API_KEY", "sk-from-env")
    with pytest.raises(RuntimeError, match="401"):
        serve_step()()
    assert FakeOpenAI.keys == ["sk-from-env"]
    assert served == ["start", "shutdown chimed-ray"]


def test_serve_step_prefers_the_configured_key(served, monkeypatch):
    monkeypatch.setenv("CHIMED_RAY_API_KEY", "sk-from-env")
    with pytest.raises(RuntimeError):
        serve_step("http.api_key=sk-config")()
    assert FakeOpenAI.keys == ["sk-config"]
    assert served[-1] == "shutdown chimed-ray"
