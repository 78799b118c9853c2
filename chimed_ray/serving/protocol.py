"""OpenAI wire format: pydantic request models, response/chunk builders and the error shape.

Only what clients of `/v1/chat/completions` and `/v1/completions` send is modelled; unknown fields
are ignored the way OpenAI ignores them. `ignore_eos` and `repetition_penalty` are vLLM-style
extensions. Every number a row samples with is bounded here, so no request can reach the engine
with a value that breaks sampling (NaN probabilities, an RNG seed out of range): temperature is 0
or at least `TEMPERATURE_FLOOR`, seeds fit a signed 64-bit RNG seed, penalties are finite, and
`stop` holds at most 4 strings of at most `MAX_STOP_CHARS` characters, as OpenAI allows.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

TEMPERATURE_FLOOR = 1e-2  # below it softmax(logits / T) underflows to NaN in fp32 for real logits
MAX_SEED = 2**63 - 1
MAX_STOPS = 4
MAX_STOP_CHARS = 128


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions (ranges as in the OpenAI reference)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0, le=10.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: bool = False
    user: Optional[str] = None

    @field_validator("temperature")
    @classmethod
    def _temperature_floor(cls, value: float) -> float:
        if 0.0 < value < TEMPERATURE_FLOOR:
            raise ValueError(f"must be 0 (greedy) or at least {TEMPERATURE_FLOOR}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_bounds(cls, value: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"each stop sequence may hold at most {MAX_STOP_CHARS} characters")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


@dataclass
class GenerationRequest:
    """What the ingress sends a model replica: prompts (text or chat) plus sampling settings."""

    request_id: str
    kind: Literal["chat", "completion"]
    prompts: list[Any]  # list[str] for completions; [list of {"role","content"}] for chat
    max_tokens: Optional[int]
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    repetition_penalty: Optional[float] = None  # None: the server's default (engine.repetition_penalty)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None
    ignore_eos: bool = False


def to_generation_request(body: SamplingFields) -> GenerationRequest:
    """Turn a validated chat/completion body into the replica's request."""
    if isinstance(body, ChatCompletionRequest):
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
        ]
        kind, prompts, prefix = "chat", [messages], "chatcmpl"
        max_tokens = body.max_completion_tokens or body.max_tokens
    else:
        kind, prompts, prefix = "completion", body.prompts(), "cmpl"
        max_tokens = body.max_tokens
    return GenerationRequest(
        request_id=f"{prefix}-{uuid.uuid4().hex[:24]}",
        kind=kind,
        prompts=prompts,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        stop=body.stop_list(),
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(request: GenerationRequest, model: str, result: dict) -> dict:
    """Non-streaming body from a replica result `{"prompt_tokens", "choices": [...]}`."""
    choices = []
    for choice in result["choices"]:
        if request.kind == "chat":
            body = {"message": {"role": "assistant", "content": choice["text"]}}
        else:
            body = {"text": choice["text"]}
        choices.append({"index": choice["index"], **body, "finish_reason": choice["finish_reason"], "logprobs": None})
    completion_tokens = sum(choice["completion_tokens"] for choice in result["choices"])
    return {
        "id": request.request_id,
        "object": "chat.completion" if request.kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(result["prompt_tokens"], completion_tokens),
    }


def stream_chunk(request: GenerationRequest, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    """One SSE chunk; `choices` are already in chunk form (see `chunk_choice`)."""
    chunk = {
        "id": request.request_id,
        "object": "chat.completion.chunk" if request.kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def chunk_choice(request: GenerationRequest, index: int, text: str | None, finish_reason: str | None,
                 first: bool = False) -> dict:
    """A chunk's choice: a `delta` for chat (with the role on the first one), `text` otherwise."""
    if request.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
