"""Config of the `serve` stage: which checkpoints to publish and how Ray Serve runs them.

One Serve deployment per model (so each checkpoint scales and is placed on its own), behind one
FastAPI ingress that speaks the OpenAI API and routes on the request's `model` field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from chimed_ray.config.loader import ConfigError, check, validate_tree

MODEL_NAME = re.compile(r"^[A-Za-z0-9._:/-]+$")


@dataclass
class ServedModel:
    """One checkpoint to publish. `name` is what clients pass as `model` (default: the dir name)."""

    path: str = ""
    name: str = ""
    # Replaces the top-level `deployment` section for this model only (None: use the shared one).
    deployment: Optional["DeploymentConfig"] = None

    def validate(self) -> None:
        check(bool(self.path), "path", "checkpoint directory is required")
        check(not self.name or bool(MODEL_NAME.match(self.name)), "name",
              f"{self.name!r} may only hold letters, digits and . _ : / -")

    def served_name(self) -> str:
        """The name clients use: `name`, or the checkpoint directory's name."""
        return self.name or Path(self.path.rstrip("/")).name


@dataclass
class EngineConfig:
    """How a replica generates: HF `generate` (batched on CPU or GPU) or vLLM (GPU, optional).

    `device: auto` means cuda with bf16 when the replica was given a GPU, else CPU with fp32.
    `max_context` 0 takes the model's `max_position_embeddings`; `max_prompt_chars` 0 allows 16
    characters per token of context (checked before tokenizing). `repetition_penalty` applies to
    requests that set no penalty of their own, so served answers do not loop. A request still
    running after `request_timeout_s` is cancelled (504); a generation thread with work but no
    progress for `stall_timeout_s` fails Serve's health check, which replaces the replica.
    """

    engine: Literal["hf", "vllm"] = "hf"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    max_context: int = 0
    default_max_tokens: int = 256
    max_n: int = 8
    max_prompt_chars: int = 0
    repetition_penalty: float = 1.1
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    # The ChiMed format ends answers with EOS; this guards under-trained models that run on.
    chat_stop: list[str] = field(default_factory=lambda: ["[human]:"])
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(self.max_context >= 0, "max_context", "must be >= 0 (0: the model's own limit)")
        check(self.default_max_tokens >= 1, "default_max_tokens", "must be >= 1")
        check(self.max_n >= 1, "max_n", "must be >= 1")
        check(self.max_prompt_chars >= 0, "max_prompt_chars", "must be >= 0 (0: 16 x max_context)")
        check(0 < self.repetition_penalty <= 10, "repetition_penalty",
              f"must be in (0, 10] (1: none), got {self.repetition_penalty}")
        check(self.request_timeout_s > 0, "request_timeout_s", "must be positive")
        check(self.stall_timeout_s > 0, "stall_timeout_s", "must be positive")
        check(self.engine == "hf" or self.device != "cpu", "device", "engine=vllm needs a GPU")
        check(self.device != "cpu" or self.precision in ("auto", "fp32"), "precision",
              f"{self.precision} needs a GPU; CPU serving runs in fp32")


@dataclass
class BatchingConfig:
    """Continuous batching: a request joins the running batch at the next decode step.

    `enabled: false` runs one request at a time per replica (the benchmark's baseline).
    `max_batch_size` counts sequences decoding together (a request with n=4 takes four slots);
    `max_prefill_tokens` caps the prompt tokens prefilled between two decode steps (one prompt is
    always admitted), so prefill and decode take turns.
    """

    enabled: bool = True
    max_batch_size: int = 8
    max_prefill_tokens: int = 2048

    def validate(self) -> None:
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens", "must be >= 1")


@dataclass
class AutoscalingConfig:
    """Serve's `autoscaling_config`; when disabled the deployment runs `num_replicas`."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: int = 0
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 300.0

    def validate(self) -> None:
        check(self.min_replicas >= 0, "min_replicas", "must be >= 0")
        check(self.max_replicas >= max(1, self.min_replicas), "max_replicas",
              f"must be >= max(1, min_replicas={self.min_replicas})")
        check(self.initial_replicas >= 0, "initial_replicas", "must be >= 0 (0: min_replicas)")
        check(self.target_ongoing_requests > 0, "target_ongoing_requests", "must be positive")

    def to_serve(self) -> dict[str, Any] | None:
        """The dict Serve's `autoscaling_config` takes, or None when autoscaling is off."""
        if not self.enabled:
            return None
        out = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        if self.initial_replicas:
            out["initial_replicas"] = self.initial_replicas
        return out


@dataclass
class DeploymentConfig:
    """Serve options of a model deployment: replicas, resources, back-pressure.

    Past `max_queued_requests` waiting requests the API answers 503 (or `overload_status`) with
    `Retry-After`; -1 (unbounded) must be asked for explicitly.
    """

    num_replicas: int = 1
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = 16
    max_queued_requests: int = 128
    overload_status: int = 503
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    health_check_period_s: float = 10.0
    # Run our replicas' request handling and handle routing on the replica's own event loop instead
    # of one extra thread/loop each (Ray Serve's RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 and
    # RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0, two of the settings RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    # makes). Safe here: generation runs on the engine's own thread and tokenizing in an executor,
    # so nothing blocks the loop.
    shared_event_loop: bool = True

    def replica_env(self) -> dict[str, str]:
        """Environment variables of every replica of the app (ingress and models)."""
        if not self.shared_event_loop:
            return {}
        return {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

    def validate(self) -> None:
        check(self.num_replicas >= 1, "num_replicas", "must be >= 1")
        check(self.max_ongoing_requests >= 1, "max_ongoing_requests", "must be >= 1")
        check(self.max_queued_requests == -1 or self.max_queued_requests >= 0, "max_queued_requests",
              "must be -1 (unbounded) or >= 0")
        check(self.overload_status in (429, 503), "overload_status", "must be 429 or 503")
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")

    def to_serve(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                  "runtime_env": {"env_vars": self.replica_env()}},
            "health_check_period_s": self.health_check_period_s,
            "backpressure_config": {"status_code": self.overload_status},
        }
        autoscaling = self.autoscaling.to_serve()
        if autoscaling is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = autoscaling
        return options


@dataclass
class HTTPConfig:
    """Where the API listens and who may call it.

    The API key comes from `api_key`, or else from the environment variable `api_key_env` (read
    on the driver when the app is built). A host other than loopback without a key refuses to
    start unless `allow_unauthenticated: true`. Request bodies above `max_body_bytes` get a 413
    before they are read.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    app_name: str = "chimed-ray"
    api_key: str = ""
    api_key_env: str = "CHIMED_RAY_API_KEY"
    allow_unauthenticated: bool = False
    max_body_bytes: int = 2 * 1024 * 1024
    ingress_replicas: int = 1
    ingress_max_ongoing_requests: int = 256

    def validate(self) -> None:
        check(0 < self.port < 65536, "port", f"must be in 1..65535, got {self.port}")
        check(self.route_prefix.startswith("/"), "route_prefix", f"must start with '/', got {self.route_prefix!r}")
        check(bool(self.app_name), "app_name", "must not be empty")
        check(self.ingress_replicas >= 1, "ingress_replicas", "must be >= 1")
        check(self.max_body_bytes >= 1024, "max_body_bytes", f"must be >= 1024, got {self.max_body_bytes}")
        check(self.ingress_max_ongoing_requests >= 1, "ingress_max_ongoing_requests", "must be >= 1")


@dataclass
class ServeConfig:
    """The whole `serve` stage. `block: false` makes `chimed-ray serve` return once the app is up
    (the app keeps running on a long-lived cluster, e.g. under `ray job submit`)."""

    models: list[ServedModel] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=EngineConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    log_requests: bool = True
    block: bool = True

    def validate(self) -> None:
        check(bool(self.models), "models", "no checkpoint to serve: pass --checkpoint DIR or set models")
        seen: dict[str, int] = {}
        for index, model in enumerate(self.models):
            validate_tree(model, f"models[{index}].")
            name = model.served_name()
            check(name not in seen, f"models[{index}].name",
                  f"{name!r} is already used by models[{seen.get(name)}]; set distinct names")
            seen[name] = index

    def deployment_for(self, model: ServedModel) -> DeploymentConfig:
        """The Serve options that apply to `model`."""
        return model.deployment or self.deployment


def parse_checkpoint_specs(specs: list[str]) -> list[dict[str, str]]:
    """Turn `--checkpoint` values (`DIR` or `name=DIR`) into `models` entries."""
    entries = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        if not path:
            raise ConfigError(f"--checkpoint {spec!r}: expected DIR or name=DIR")
        entries.append({"name": name, "path": path})
    return entries


def checkpoint_overrides(specs: list[str]) -> list[str]:
    """`--checkpoint` values as one `models=[...]` override (JSON is valid YAML), replacing the
    YAML's model list, so checkpoints flow through the same loader as every other key."""
    if not specs:
        return []
    return [f"models={json.dumps(parse_checkpoint_specs(specs))}"]


def inline_overrides(values: dict[str, Any]) -> list[str]:
    """Top-level ServeConfig keys given as a mapping (Serve builder args) as `key=value` overrides."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


__all__ = [
    "AutoscalingConfig",
    "BatchingConfig",
    "DeploymentConfig",
    "EngineConfig",
    "HTTPConfig",
    "ServeConfig",
    "ServedModel",
    "checkpoint_overrides",
    "inline_overrides",
    "parse_checkpoint_specs",
]
