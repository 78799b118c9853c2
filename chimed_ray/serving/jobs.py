"""From an API request to the sequences a replica generates: render, tokenize, check limits.

A `Job` is one API request on a replica: n sequences per prompt, each a `RowState`. Everything a
client can get wrong is caught here and raised as `RequestError` (a 400 in the OpenAI shape), so
nothing malformed reaches the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from chimed_ray.serving.protocol import MAX_SEED, GenerationRequest
from chimed_ray.serving.sampling import RowState


class RequestError(Exception):
    """A request the model cannot serve as asked; carries the HTTP status and OpenAI fields."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def to_event(self) -> dict[str, Any]:
        return {"type": "error", "status": self.status, "message": self.message, "param": self.param, "code": self.code}


@dataclass
class Limits:
    """What a replica accepts: context size, token defaults, how many sequences one request may ask."""

    max_context: int
    default_max_tokens: int
    max_n: int
    max_sequences: int
    chat_stop: list[str] = field(default_factory=list)
    max_prompt_chars: int = 0  # 0: 16 characters per token of context
    repetition_penalty: float = 1.0  # for requests that set no penalty of their own

    def prompt_chars(self) -> int:
        return self.max_prompt_chars or 16 * self.max_context


@dataclass
class Job:
    """One API request on a replica."""

    request: GenerationRequest
    rows: list[RowState]  # prompt-major: prompt p, choice j is rows[p * n + j]
    prompt_tokens: int
    started: float = field(default_factory=time.perf_counter)
    timed_out: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(len(row.token_ids) for row in self.rows)

    @property
    def failed(self) -> bool:
        return any(row.finish_reason == "error" for row in self.rows)

    def cancel(self) -> None:
        """Ask the engine to drop every row of this request at its next step."""
        for row in self.rows:
            row.cancelled = True

    def expire(self) -> None:
        """The request's deadline passed: cancel it and remember why."""
        self.timed_out = True
        self.cancel()

    def result(self) -> dict[str, Any]:
        """The replica's answer: prompt token count and one choice per row."""
        choices = [
            {
                "index": row.choice_index,
                "text": row.text,
                "finish_reason": row.finish_reason or "length",
                "completion_tokens": len(row.token_ids),
            }
            for row in self.rows
        ]
        return {"prompt_tokens": self.prompt_tokens, "choices": choices}


def render_prompt(request: GenerationRequest, prompt: Any, tokenizer: Any) -> list[int]:
    """Token ids of one prompt: chat messages through the checkpoint's chat template."""
    if request.kind == "chat":
        try:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja errors from templates that reject a message order
            raise RequestError(f"messages: the chat template rejected them: {exc}", param="messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        if tokenizer.bos_token_id is None:
            raise RequestError("prompt: must not be empty", param="prompt")
        ids = [tokenizer.bos_token_id]
    return list(ids)


def _check_prompt_size(request: GenerationRequest, limits: Limits, param: str) -> None:
    """Refuse an oversized prompt by its characters, before paying for the tokenizer."""
    if request.kind == "chat":
        chars = sum(len(message["content"]) for messages in request.prompts for message in messages)
    else:
        chars = sum(len(prompt) for prompt in request.prompts)
    if chars > limits.prompt_chars():
        raise RequestError(
            f"The {param} hold {chars} characters, more than the {limits.prompt_chars()} this model accepts "
            f"({limits.max_context} tokens of context). Shorten the {param}.",
            param=param,
            code="context_length_exceeded",
        )


def _penalties(request: GenerationRequest, limits: Limits) -> dict[str, float]:
    """The request's penalties; the serving default repetition penalty when it asked for none
    (OpenAI's frequency/presence penalties, when given, replace that default)."""
    repetition = request.repetition_penalty
    if repetition is None:
        own = request.frequency_penalty or request.presence_penalty
        repetition = 1.0 if own else limits.repetition_penalty
    return {"repetition_penalty": repetition, "frequency_penalty": request.frequency_penalty,
            "presence_penalty": request.presence_penalty}


def _max_tokens(request: GenerationRequest, prompt_len: int, limits: Limits, param: str) -> int:
    room = limits.max_context - prompt_len
    if room <= 0:
        raise RequestError(
            f"This model's maximum context length is {limits.max_context} tokens, but the prompt has "
            f"{prompt_len} tokens. Shorten the {param}.",
            param=param,
            code="context_length_exceeded",
        )
    if request.max_tokens is None:
        return min(limits.default_max_tokens, room)
    if request.max_tokens > room:
        raise RequestError(
            f"This model's maximum context length is {limits.max_context} tokens. However, you requested "
            f"{prompt_len + request.max_tokens} tokens ({prompt_len} in the {param}, {request.max_tokens} in "
            f"the completion). Reduce the {param} or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return request.max_tokens


def prepare_job(request: GenerationRequest, tokenizer: Any, limits: Limits) -> Job:
    """Validate `request` against `limits` and expand it into one `RowState` per sequence."""
    if request.n > limits.max_n:
        raise RequestError(f"n: at most {limits.max_n} choices per request, got {request.n}", param="n")
    sequences = request.n * len(request.prompts)
    if sequences > limits.max_sequences:
        raise RequestError(
            f"n: {len(request.prompts)} prompt(s) x n={request.n} = {sequences} sequences, more than the "
            f"{limits.max_sequences} one request may generate on this server",
            param="n",
        )
    if not request.prompts:
        raise RequestError("prompt: must not be empty", param="prompt")
    if request.seed is not None and request.seed + sequences - 1 > MAX_SEED:
        raise RequestError(f"seed: must be at most {MAX_SEED - sequences + 1} for {sequences} sequences "
                           f"(each uses seed + its index), got {request.seed}", param="seed")
    param = "messages" if request.kind == "chat" else "prompt"
    _check_prompt_size(request, limits, param)
    stop = list(request.stop) + (limits.chat_stop if request.kind == "chat" else [])
    penalties = _penalties(request, limits)
    rows, prompt_tokens = [], 0
    for prompt_index, prompt in enumerate(request.prompts):
        ids = render_prompt(request, prompt, tokenizer)
        max_tokens = _max_tokens(request, len(ids), limits, param)
        prompt_tokens += len(ids)
        for choice in range(request.n):
            index = prompt_index * request.n + choice
            rows.append(
                RowState(
                    prompt_ids=ids,
                    max_tokens=max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    **penalties,
                    seed=None if request.seed is None else request.seed + index,
                    stop=stop,
                    ignore_eos=request.ignore_eos,
                    choice_index=index,
                    prompt_index=prompt_index,
                )
            )
    return Job(request=request, rows=rows, prompt_tokens=prompt_tokens)
