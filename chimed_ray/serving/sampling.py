"""Per-sequence decoding state and sampling, shared by the generation engines.

Every sequence in a batch (`RowState`) carries its own temperature, top-p, penalties, seed, stop
strings and token budget, so requests with different settings share one forward pass. The state
turns new token ids into text deltas that never split a UTF-8 character and never leak the start of
a stop string, which is what streaming clients see. A row that fails (`fail`) ends alone, with
finish reason "error"; the rest of its batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import torch

Listener = Callable[["RowState", str], None]


@dataclass
class RowState:
    """One sequence being generated: its settings, the tokens so far, and what was streamed."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    choice_index: int = 0
    prompt_index: int = 0
    listener: Optional[Listener] = None  # called from the generation thread with each text delta
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: Optional[str] = None
    cancelled: bool = False
    error: Optional[str] = None  # why the row failed (server log only; clients get a generic 500)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_token(self, token_id: int, decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
        """Append one generated token, update text, finish state and notify the listener."""
        if self.finished:
            return
        if self.cancelled:
            self._finish("abort")
            return
        self.token_ids.append(token_id)
        is_eos = token_id in eos_ids and not self.ignore_eos
        text = decode(self.token_ids[:-1] if is_eos else self.token_ids)
        if is_eos:
            self.text = text
            self._finish("stop")
            return
        self.update_text(text, None)
        if not self.finished and len(self.token_ids) >= self.max_tokens:
            self._finish("length")

    def fail(self, error: str) -> None:
        """End this row alone: finish reason "error", nothing more streamed."""
        if not self.finished:
            self.error = error
            self.finish_reason = "error"
            self._emit(self.emitted, force=True)

    def abort(self) -> None:
        """End a cancelled row where it stands (the client left or its deadline passed)."""
        if not self.finished:
            self._finish("abort")

    def update_text(self, text: str, finish_reason: Optional[str]) -> None:
        """Set the full text so far (cut at the first stop string) and stream what is safe."""
        cut = _first_stop(text, self.stop)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
        self.text = text
        if finish_reason is not None:
            self._finish(finish_reason)
        else:
            self._emit(self._safe_end())

    def _safe_end(self) -> int:
        """How much text can be streamed: hold back a half-decoded character and stop prefixes."""
        end = len(self.text.rstrip("\ufffd"))
        for stop in self.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[:end].endswith(stop[:size]):
                    end -= size
                    break
        return max(end, self.emitted)

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        if self.text.endswith("\ufffd"):
            self.text = self.text.rstrip("\ufffd")
        self._emit(len(self.text), force=True)

    def _emit(self, end: int, force: bool = False) -> None:
        delta = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        if self.listener is not None and (delta or force):
            self.listener(self, delta)


def _first_stop(text: str, stops: list[str]) -> Optional[int]:
    positions = [text.find(stop) for stop in stops]
    found = [p for p in positions if p >= 0]
    return min(found) if found else None


def make_generator(seed: Optional[int], device: "torch.device | str") -> "torch.Generator":
    """A per-sequence RNG: seeded for reproducible requests, fresh entropy otherwise."""
    import torch

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def apply_penalties(logits: "torch.Tensor", prompt_ids: list[int], output_ids: list[int], repetition: float,
                    frequency: float, presence: float) -> "torch.Tensor":
    """`logits` [V] with the repetition penalties applied (a new tensor; the input is untouched).

    `repetition` is multiplicative over every token seen in the prompt or the output, as HF's
    `RepetitionPenaltyLogitsProcessor` and vLLM do: a positive logit is divided by it, a negative
    one multiplied. `frequency` and `presence` are OpenAI's additive penalties over the output only:
    `logit -= frequency * count + presence * (count > 0)`.
    """
    import torch

    logits = logits.float().clone()
    if repetition != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long, device=logits.device)
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / repetition, scores * repetition)
    if (frequency or presence) and output_ids:
        counts = torch.bincount(torch.tensor(output_ids, device=logits.device), minlength=logits.numel())
        counts = counts[: logits.numel()].to(logits.dtype)
        logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)
    return logits


def sample_token(logits: "torch.Tensor", temperature: float, top_p: float, generator: "torch.Generator") -> int:
    """Draw one token id from `logits` [V]: greedy at temperature 0, else nucleus sampling."""
    import torch

    if temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = probs.sort(descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
    return int(order[choice])
