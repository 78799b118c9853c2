"""OpenAI-compatible Ray Serve app for ChiMed checkpoints.

`start_server(config) -> base_url` and `shutdown_server()` are what other stages call;
`app_builder` is the import path for `serve run` / `serve deploy`. Imported lazily so
`import chimed_ray.serving` does not pull in Ray Serve or torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "app_builder": "chimed_ray.serving.app",
    "build_app": "chimed_ray.serving.app",
    "start_server": "chimed_ray.serving.app",
    "shutdown_server": "chimed_ray.serving.app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'chimed_ray.serving' has no attribute {name!r}")
