"""The OpenAI-compatible HTTP front: FastAPI routes on a Serve ingress deployment.

Routes on the request's `model` to that checkpoint's `ModelServer` handle. Every failure leaves
as `{"error": {"message", "type", "param", "code"}}`: validation 400, auth 401, unknown model 404,
body too large 413, Serve back-pressure 503 (or 429, both with `Retry-After`), request timeout 504,
anything unexpected 500 (whose body never carries the exception: that goes to the log).

`RequestGate` (serving/gate.py) runs before any route: the API key, then the body size.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the routes that
# Serve rebinds into class-based views.
import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from chimed_ray.serving import gate
from chimed_ray.serving.gate import RequestGate
from chimed_ray.serving.protocol import (
    ERROR_TYPES,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    SamplingFields,
    chunk_choice,
    completion_response,
    error_body,
    stream_chunk,
    to_generation_request,
    usage,
)

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = "1"
api = FastAPI(title="chimed-ray", description="OpenAI-compatible API for ChiMed checkpoints")


class APIError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        type_ = ERROR_TYPES.get(self.status, "invalid_request_error")
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.status in (429, 503):
            headers["Retry-After"] = RETRY_AFTER_S
        return JSONResponse(error_body(self.message, type_, self.param, self.code), self.status, headers=headers)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "APIError":
        return cls(event["status"], event["message"], event.get("param"), event.get("code"))


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        message = f"We could not parse the JSON body of your request: {first.get('msg', 'invalid JSON')}"
        return APIError(400, message, None, "invalid_json").response()
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if "input" in first and first.get("type") != "missing":
        message += f" (got {json.dumps(first['input'], ensure_ascii=False, default=str)[:200]})"
    return APIError(400, message, param, first.get("type")).response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return APIError(exc.status_code, str(exc.detail)).response()


api.add_middleware(RequestGate)


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s", request.url.path)
    return APIError(500, "Internal server error; the details are in the server log.",
                    code="internal_error").response()


def overload_error(exc: BaseException) -> Optional[APIError]:
    """Serve's back-pressure (or an unavailable deployment) as a 503/429 answer; None otherwise."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    for candidate in (exc, getattr(exc, "cause", None), exc.__cause__):
        if isinstance(candidate, BackPressureError):
            return APIError(candidate.status_code, f"The server is overloaded: {candidate}", code="overloaded")
        if isinstance(candidate, DeploymentUnavailableError):
            return APIError(503, f"The model is unavailable: {candidate}", code="unavailable")
    return None


@serve.deployment(name="OpenAIIngress")
@serve.ingress(api)
class OpenAIIngress:
    """Routes OpenAI requests to one `ModelServer` deployment per model name."""

    def __init__(self, models: dict[str, Any], api_key: str = "", max_body_bytes: int = 2 * 1024 * 1024):
        self.models = models  # name -> DeploymentHandle (Serve replaces the bound apps)
        # Serve runs a pickled copy of `api`, so the gate's settings live in a module, not in `api.state`.
        gate.configure(api_key, max_body_bytes)
        self.created = int(time.time())

    def _handle(self, model: str) -> Any:
        if model not in self.models:  # as OpenAI words it: the names live behind GET /v1/models
            raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.", "model",
                           "model_not_found")
        return self.models[model]

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every model answers, 503 naming the ones that do not."""
        names = sorted(self.models)
        replies = await asyncio.gather(
            *(asyncio.wait_for(self.models[name].info.remote(), 30) for name in names), return_exceptions=True
        )
        models = {}
        for name, reply in zip(names, replies):
            if not isinstance(reply, dict):  # open route: the reason goes to the log, not the caller
                logger.error("health of %s failed: %r", name, reply)
                reply = {"status": "unavailable"}
            models[name] = reply
        healthy = all(info.get("status") == "ok" for info in models.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "models": models}, 200 if healthy else 503)

    @api.get("/v1/models")
    async def list_models(self) -> dict:
        return {"object": "list", "data": [self._model_card(name) for name in sorted(self.models)]}

    @api.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict:
        self._handle(model)
        return self._model_card(model)

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "chimed-ray"}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        return await self._complete(body)

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        return await self._complete(body)

    async def _complete(self, body: SamplingFields) -> Any:
        handle = self._handle(body.model)
        generation = to_generation_request(body)
        try:
            if body.stream:
                return await self._stream(handle, generation, body)
            result = await handle.generate.remote(generation)
        except APIError:
            raise
        except Exception as exc:
            mapped = overload_error(exc)
            if mapped is None:
                raise
            raise mapped from None
        if result["type"] == "error":
            raise APIError.from_event(result)
        return completion_response(generation, body.model, result)

    async def _stream(self, handle: Any, generation: GenerationRequest, body: SamplingFields) -> StreamingResponse:
        events = handle.options(stream=True).generate_stream.remote(generation)
        first = await events.__anext__()  # validation errors arrive before any SSE is sent
        if first["type"] == "error":
            raise APIError.from_event(first)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        sse = self._sse(events, generation, body.model, first["prompt_tokens"], include_usage)
        return StreamingResponse(sse, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _sse(self, events: Any, generation: GenerationRequest, model: str, prompt_tokens: int,
                   include_usage: bool) -> AsyncIterator[str]:
        def data(payload: dict) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        choices = len(generation.prompts) * generation.n
        completion_tokens, complete = 0, False
        try:
            if generation.kind == "chat":
                opening = [chunk_choice(generation, i, "", None, first=True) for i in range(choices)]
                yield data(stream_chunk(generation, model, opening))
            async for event in events:
                if event["type"] == "delta":
                    choice = chunk_choice(generation, event["index"], event["text"], None)
                elif event["type"] == "finish":
                    completion_tokens += event["completion_tokens"]
                    choice = chunk_choice(generation, event["index"], None, event["finish_reason"])
                else:
                    yield data(error_body(event["message"], ERROR_TYPES.get(event["status"], "internal_error"),
                                          event.get("param"), event.get("code")))
                    break
                yield data(stream_chunk(generation, model, [choice]))
            complete = True
        except Exception:  # the replica died mid-stream: tell the client, do not hang
            logger.exception("stream %s broke", generation.request_id)
            yield data(error_body("The stream was interrupted by a server error; the details are in the server "
                                  "log.", "internal_error", None, "internal_error"))
        finally:
            if not complete:  # client gone (or error): stop generating for it on the replica
                events.cancel()
        if include_usage:
            yield data(stream_chunk(generation, model, [], usage(prompt_tokens, completion_tokens)))
        yield "data: [DONE]\n\n"
