"""Serve config: YAML + overrides + --checkpoint, errors that name the key, and the CLI and the Serve
config file building the same application (without starting Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from chimed_ray.config.loader import ConfigError, load_config
from chimed_ray.config.serve import ServeConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "serve"


def test_bundled_serve_configs_load_and_start_with_their_command():
    for name in ("tiny.yaml", "gpu.yaml"):
        text = (CONFIGS / name).read_text(encoding="utf-8")
        assert text.startswith("# ") and "serve --config configs/serve/" + name in text.splitlines()[0]
        load_config(ServeConfig, CONFIGS / name)
    gpu = load_config(ServeConfig, CONFIGS / "gpu.yaml").deployment.to_serve()
    assert gpu["ray_actor_options"]["num_gpus"] == 1 and gpu["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in gpu


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["models=[]"], "models"),
        (["models=[{name: a}]"], "models[0].path"),
        (["models=[{path: /x/m}, {path: /y/m}]"], "models[1].name"),
        (["models=[{path: /x/m, name: 'a b'}]"], "models[0].name"),
        (["http.port=0"], "http.port"),
        (["deployment.overload_status=500"], "deployment.overload_status"),
        (["deployment.autoscaling.max_replicas=0"], "deployment.autoscaling.max_replicas"),
        (["models=[{path: /x/m, deployment: {num_gpus: -1}}]"], "models[0].deployment.num_gpus"),
        (["engine.engine=tpu"], "engine.engine"),
        (["engine.device=cpu", "engine.precision=bf16"], "engine.precision"),
        (["batching.max_batch_size=0"], "batching.max_batch_size"),
    ],
)
def test_errors_name_the_key(overrides, key):
    base = [] if any(o.startswith("models=") for o in overrides) else ["models=[{path: /x/m}]"]
    with pytest.raises(ConfigError, match=re.escape(f"{key}:")):
        load_config(ServeConfig, None, base + overrides)


def test_cli_checkpoints_replace_the_yaml_models_and_mix_with_overrides():
    from chimed_ray.serving.run import parse_args

    config = parse_args(["--config", str(CONFIGS / "tiny.yaml"), "http.port=9001", "--checkpoint", "/ckpt/sft/final",
                         "batching.enabled=false", "--checkpoint", "b=/ckpt/other"])
    assert [(m.served_name(), m.path) for m in config.models] == [("final", "/ckpt/sft/final"), ("b", "/ckpt/other")]
    assert config.http.port == 9001 and not config.batching.enabled
    with pytest.raises(ConfigError, match="models: no checkpoint"):
        parse_args(["models=[]"])


def test_serve_config_file_and_cli_give_the_same_config():
    from ray.serve.schema import ServeDeploySchema

    from chimed_ray.serving.app import config_from_args
    from chimed_ray.serving.run import parse_args

    deploy = yaml.safe_load((CONFIGS / "serve_config.yaml").read_text(encoding="utf-8"))
    ServeDeploySchema.model_validate(deploy)
    app = deploy["applications"][0]
    assert app["import_path"] == "chimed_ray.serving.app:app_builder"
    args = {**app["args"], "config": str(CONFIGS / "tiny.yaml")}
    from_file = config_from_args(args)
    from_cli = parse_args(["--config", str(CONFIGS / "tiny.yaml"), "--checkpoint", args["checkpoint"]])
    assert from_file == from_cli
    inline = config_from_args({"checkpoint": ["m=/a"], "engine": {"max_n": 2}, "overrides": ["http.port=9"]})
    assert inline.models[0].name == "m" and inline.engine.max_n == 2 and inline.http.port == 9


def test_build_app_wires_one_deployment_per_model(tiny_checkpoint, second_checkpoint):
    from chimed_ray.serving.app import app_builder, build_app
    from chimed_ray.serving.run import parse_args

    argv = ["--config", str(CONFIGS / "tiny.yaml"), "--checkpoint", str(tiny_checkpoint),
            "--checkpoint", f"b={second_checkpoint}", "deployment.max_ongoing_requests=7", "http.api_key=k"]
    app = build_app(parse_args(argv))
    models, api_key, max_body_bytes = app._bound_deployment.init_args
    assert api_key == "k" and sorted(models) == ["b", "tiny"] and max_body_bytes == 2 * 1024 * 1024
    bound = models["b"]._bound_deployment
    assert bound.name == "Model_b" and bound.max_ongoing_requests == 7
    assert bound.init_args[:2] == ("b", str(Path(second_checkpoint).resolve()))
    same = app_builder({
        "config": str(CONFIGS / "tiny.yaml"),
        "checkpoint": [str(tiny_checkpoint), f"b={second_checkpoint}"],
        "overrides": ["deployment.max_ongoing_requests=7", "http.api_key=k"],
    })
    assert sorted(same._bound_deployment.init_args[0]) == sorted(models)
    with pytest.raises(ConfigError, match=r"models\[0\].path: checkpoint directory"):
        build_app(parse_args(["--checkpoint", "/does/not/exist"]))


def test_a_public_host_without_an_api_key_refuses_to_start(tiny_checkpoint, monkeypatch):
    from chimed_ray.serving.app import build_app
    from chimed_ray.serving.run import parse_args

    monkeypatch.delenv("CHIMED_RAY_API_KEY", raising=False)
    public = ["--config", str(CONFIGS / "tiny.yaml"), "--checkpoint", str(tiny_checkpoint), "http.host=0.0.0.0"]
    with pytest.raises(ConfigError, match=r"http.host: 0.0.0.0 is reachable .*CHIMED_RAY_API_KEY is unset"):
        build_app(parse_args(public))
    monkeypatch.setenv("CHIMED_RAY_API_KEY", "")  # set but empty is no key either
    with pytest.raises(ConfigError, match="http.host"):
        build_app(parse_args(public))
    assert build_app(parse_args(public + ["http.allow_unauthenticated=true"]))._bound_deployment.init_args[1] == ""
    monkeypatch.setenv("CHIMED_RAY_API_KEY", "from-env")
    assert build_app(parse_args(public))._bound_deployment.init_args[1] == "from-env"
    monkeypatch.delenv("CHIMED_RAY_API_KEY")
    loopback = build_app(parse_args(public[:-1]))  # 127.0.0.1: only this machine can call it
    assert loopback._bound_deployment.init_args[1] == ""


def test_the_gpu_config_needs_its_key_from_the_environment(monkeypatch):
    from chimed_ray.serving.app import resolve_api_key

    config = load_config(ServeConfig, CONFIGS / "gpu.yaml")
    assert config.http.host == "0.0.0.0" and not config.http.api_key and not config.http.allow_unauthenticated
    monkeypatch.delenv("CHIMED_RAY_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="export CHIMED_RAY_API_KEY"):
        resolve_api_key(config.http)
    monkeypatch.setenv("CHIMED_RAY_API_KEY", "secret")
    assert resolve_api_key(config.http) == "secret"


def test_cli_refuses_a_public_server_in_one_line(monkeypatch, capsys):
    from chimed_ray.cli import main

    monkeypatch.delenv("CHIMED_RAY_API_KEY", raising=False)
    code = main(["serve", "--config", str(CONFIGS / "gpu.yaml"), "block=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "http.host" in err[0] and "Traceback" not in err[0]
