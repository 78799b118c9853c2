"""Build the Serve application from a `ServeConfig`, and start/stop it on the current cluster.

Three entry points build the same application through `build_app`:
`chimed-ray serve` (serving/run.py), `serve run|deploy configs/serve/serve_config.yaml`
(`app_builder`), and other stages calling `start_server(config)` / `shutdown_server()`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Any

from chimed_ray.config.loader import ConfigError, load_config, validate_tree
from chimed_ray.config.serve import HTTPConfig, ServeConfig, checkpoint_overrides, inline_overrides

logger = logging.getLogger(__name__)


def deployment_name(model_name: str) -> str:
    """Serve deployment name for a model (no '#', readable in `serve status` and metrics)."""
    return "Model_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


def resolve_checkpoint(path: str, key: str, trust_remote_code: bool = False) -> str:
    """Absolute path of a checkpoint directory, checked here so a typo fails before any replica."""
    from chimed_ray.models import is_hf_checkpoint

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"{key}: checkpoint directory {path!r} does not exist")
    if not is_hf_checkpoint(directory):
        raise ConfigError(f"{key}: {path!r} is not an HF checkpoint (needs config.json and *.safetensors)")
    return str(directory.resolve())


def build_app(config: ServeConfig) -> Any:
    """One `ModelServer` deployment per model behind one `OpenAIIngress`; returns the Application."""
    from chimed_ray.serving.ingress import OpenAIIngress
    from chimed_ray.serving.model_server import ModelServer

    validate_tree(config)  # configs built in code (e.g. by the pipeline) skip load_config
    api_key = resolve_api_key(config.http, warn=False)  # an open public server is refused before anything starts
    models = {}
    for index, model in enumerate(config.models):
        name = model.served_name()
        path = resolve_checkpoint(model.path, f"models[{index}].path")
        options = config.deployment_for(model).to_serve()
        models[name] = ModelServer.options(name=deployment_name(name), **options).bind(
            name, path, config.engine, config.batching, config.log_requests
        )
    if not api_key:
        resolve_api_key(config.http)  # its warning comes after the checkpoints: a bad path is then the one line
    if config.engine.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            logger.warning("engine.engine=vllm but vllm is not importable here; replicas need it installed")
    ingress = OpenAIIngress.options(
        num_replicas=config.http.ingress_replicas,
        max_ongoing_requests=config.http.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": config.deployment.replica_env()}},
    )
    return ingress.bind(models, api_key, config.http.max_body_bytes)


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname: assume it is reachable from elsewhere
        return False


def resolve_api_key(http: HTTPConfig, warn: bool = True) -> str:
    """The API key (`http.api_key`, else `$<http.api_key_env>`), refusing an open non-loopback server.

    Raises:
        ConfigError: `http.host` is reachable from other machines, no key is set, and
            `http.allow_unauthenticated` is false.
    """
    api_key = http.api_key or (os.environ.get(http.api_key_env, "") if http.api_key_env else "")
    if api_key or http.allow_unauthenticated:
        return api_key
    source = f"${http.api_key_env} is unset or empty" if http.api_key_env else "http.api_key_env is empty"
    if not is_loopback(http.host):
        raise ConfigError(
            f"http.host: {http.host} is reachable from other machines but no API key is set ({source} and "
            f"http.api_key is empty); export {http.api_key_env or 'CHIMED_RAY_API_KEY'}=<key>, or set "
            "http.allow_unauthenticated=true to serve without auth"
        )
    if warn:
        logger.warning("serving on %s without an API key (%s)", http.host, source)
    return api_key


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """ServeConfig from Serve builder args: `config` (YAML path), `checkpoint` (DIR, name=DIR or a
    list), `overrides` (key=value list), and any top-level ServeConfig key inline."""
    args = dict(args or {})
    path = args.pop("config", None)
    checkpoints = args.pop("checkpoint", None) or args.pop("checkpoints", None) or []
    overrides = args.pop("overrides", None) or []
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    extra = inline_overrides(args) + overrides + checkpoint_overrides(checkpoints)
    return load_config(ServeConfig, path, extra)


def app_builder(args: dict[str, Any]) -> Any:
    """Import path for `serve run` / `serve deploy`: `chimed_ray.serving.app:app_builder`."""
    return build_app(config_from_args(args))


def base_url(config: ServeConfig, port: int | None = None) -> str:
    """The OpenAI `base_url` of the running app, e.g. `http://127.0.0.1:8000/v1`."""
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    prefix = config.http.route_prefix.rstrip("/")
    return f"http://{host}:{port or config.http.port}{prefix}/v1"


def _running_http_port(default: int) -> int:
    """The port Serve's proxies really listen on (Serve may have been started earlier)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # private API: fall back to what was asked for
        return default


def start_server(config: ServeConfig) -> str:
    """Deploy the app on the current Ray cluster (starting Ray if needed) and return its base URL.

    Returns once every replica is up; the app keeps running until `shutdown_server()`.
    """
    import ray
    from ray import serve

    app = build_app(config)  # checks checkpoints before touching the cluster
    from chimed_ray.cluster.address import check_ray_address

    if not ray.is_initialized():
        check_ray_address()  # a dead recorded cluster: one line in seconds, not a hang
        ray.init()
    serve.start(http_options={"host": config.http.host, "port": config.http.port})
    port = _running_http_port(config.http.port)
    if port != config.http.port:
        logger.warning("Serve already listens on port %d; http.port=%d is ignored", port, config.http.port)
    serve.run(app, name=config.http.app_name, route_prefix=config.http.route_prefix)
    url = base_url(config, port)
    logger.info("serving %s at %s", ", ".join(m.served_name() for m in config.models), url)
    return url


def shutdown_server(app_name: str = "chimed-ray") -> None:
    """Delete the app; stop Serve entirely when no other application is left on the cluster."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    serve.delete(app_name)
    if not serve.status().applications:
        serve.shutdown()
