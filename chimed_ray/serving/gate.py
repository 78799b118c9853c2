"""What every HTTP request passes before a route runs: the API key, then the size of its body.

Only `GET /health` is open without the key (the exact path below the route prefix; nothing that
merely ends in `/health`). A body over `http.max_body_bytes` gets a 413 from its Content-Length,
or as soon as a chunked upload grows past the cap, without the rest being read, so a huge body
costs the server nothing and never reaches JSON parsing or the tokenizer.

The settings live in this module (set by the ingress constructor): Serve runs a pickled copy of
the FastAPI app, so `api.state` set in the constructor is not the state the requests see.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from chimed_ray.serving.protocol import ERROR_TYPES, error_body

OPEN_PATH = "/health"


@dataclass
class GateSettings:
    api_key: str = ""
    max_body_bytes: int = 2 * 1024 * 1024


settings = GateSettings()


def configure(api_key: str, max_body_bytes: int) -> None:
    """Set the key and the body cap for this process's ingress."""
    settings.api_key, settings.max_body_bytes = api_key, max_body_bytes


def _route_path(scope: dict) -> str:
    """The request path below the app's route prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def authorized(scope: dict, api_key: str) -> bool:
    """No key configured, the open health route, or `Authorization: Bearer <key>`."""
    if not api_key or (_route_path(scope) == OPEN_PATH and scope.get("method") in ("GET", "HEAD")):
        return True
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _refusal(status: int, message: str, code: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(message, ERROR_TYPES[status], None, code), status, headers=headers)


class RequestGate:
    """ASGI middleware: the API key, then the body size, before any route or body parsing runs."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not authorized(scope, settings.api_key):
            refusal = _refusal(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                               "invalid_api_key")
            return await refusal(scope, receive, send)
        limit = settings.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        body: Any = None
        if declared.isdigit() and int(declared) <= limit and scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await _read_body(receive, limit)
        elif not declared.isdigit() or int(declared) > limit:
            body = _TOO_LARGE
        if body is _TOO_LARGE:
            refusal = _refusal(413, f"The request body is larger than the {limit} bytes this server accepts.",
                               "request_too_large")
            return await refusal(scope, receive, send)
        await self.app(scope, _replay(body, receive) if body is not None else receive, send)


_TOO_LARGE: Any = object()


async def _read_body(receive: Any, limit: int) -> Any:
    """The whole body, `_TOO_LARGE` once it passes `limit` bytes, or None if the client left."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # a disconnect: let the app see it
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return _TOO_LARGE
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the buffered body over once, then listens for the disconnect."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed
