"""Is the Ray cluster this process would join alive? Checked in seconds before `ray.init`.

`ray.init()` joins the cluster named by `RAY_ADDRESS`, else the one recorded in Ray's
current-cluster file (`<RAY_TMPDIR or /tmp>/ray/ray_current_cluster`, written by `ray start`).
When that cluster is gone (a `ray start --head` that died, a head node that was torn down),
`ray.init` waits minutes on the dead GCS and does not answer SIGTERM meanwhile. A TCP connect with
a short timeout tells a dead address from a live one first.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from chimed_ray.utils.files import InputError

CONNECT_TIMEOUT_S = 3.0
FRESH_LOCAL = "set RAY_ADDRESS=local to start a fresh local cluster"


def current_cluster_file() -> Path:
    """Where `ray start` records the address of the cluster later `ray.init()` calls join."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def _host_port(address: str) -> tuple[str, int] | None:
    address = address.strip()
    default_port = 10001 if address.startswith("ray://") else 6379
    address = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = address.rpartition(":")
    if not host:
        return (port, default_port) if port else None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why nothing answers at host:port, or None if something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_ray_address(timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise InputError (one line, with the fix) if the cluster `ray.init()` would join is dead."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return
    if env and env != "auto":
        origin, address = "RAY_ADDRESS", env
        fix = "point RAY_ADDRESS at a live head node (host:6379), or unset it to start a fresh local cluster"
    else:
        recorded = current_cluster_file()
        if not recorded.is_file():
            return  # nothing recorded: ray.init starts a local cluster
        origin, address = str(recorded), recorded.read_text(encoding="utf-8", errors="replace").strip()
        fix = f"run `ray stop` (it forgets the address) or {FRESH_LOCAL}; or set RAY_ADDRESS to a live head node"
    target = _host_port(address) if address else None
    if target is None:
        return  # not host:port; let Ray report its own error
    reason = _unreachable(*target, timeout)
    if reason is not None:
        what = "RAY_ADDRESS" if origin == "RAY_ADDRESS" else f"Ray's current-cluster file {origin}"
        raise InputError(f"{what} names the Ray cluster at {address}, which does not answer ({reason}); {fix}")
