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


@dataclass
class PenaltyBatch:
    """Repetition penalties of B live rows for one step, over dense [B, V] token statistics (each
    row keeps its own, updated in place as it generates, so a step only stacks them)."""

    repetition: "torch.Tensor"  # [B]: multiplicative, over tokens seen in prompt or output (1: none)
    frequency: "torch.Tensor"  # [B]: OpenAI's, per time a token was generated
    presence: "torch.Tensor"  # [B]: OpenAI's, once a token was generated
    seen: "torch.Tensor"  # [B, V] bool: in the prompt or generated
    counts: Optional["torch.Tensor"] = None  # [B, V] float: times generated (None: no row uses them)


def apply_penalties(logits: "torch.Tensor", penalties: PenaltyBatch) -> "torch.Tensor":
    """`logits` [B, V] with the penalties applied (a new tensor; the input is untouched).

    The repetition penalty works as HF's `RepetitionPenaltyLogitsProcessor` and vLLM's do: over
    every token seen in the prompt or the output, a positive logit is divided by it and a negative
    one multiplied. Frequency and presence are OpenAI's additive penalties over the output only:
    `logit -= frequency * count + presence * (count > 0)`.
    """
    logits = logits.float().clone()
    rows, tokens = penalties.seen.nonzero(as_tuple=True)  # only the touched entries are computed
    values, repetition = logits[rows, tokens], penalties.repetition[rows]
    logits[rows, tokens] = values.where(values <= 0, values / repetition).where(values > 0, values * repetition)
    if penalties.counts is not None:
        rows, tokens = penalties.counts.nonzero(as_tuple=True)
        counts = penalties.counts[rows, tokens]
        logits[rows, tokens] -= penalties.frequency[rows] * counts + penalties.presence[rows]
    return logits


def sample_rows(logits: "torch.Tensor", temperature: "torch.Tensor", top_p: "torch.Tensor",
                generators: list["torch.Generator"]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """One token per row from `logits` [B, V]: greedy where temperature is 0, else nucleus sampling
    with the row's own RNG. Returns the tokens [B] and whether each row's distribution was finite [B].

    A draw inverts the row's CDF at one uniform from its generator, which is what `multinomial`
    does for one sample, batched over rows: one cheap RNG call per row instead of a multinomial.
    """
    import torch

    valid = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    greedy = temperature <= 0
    tokens = logits.argmax(-1) if bool(greedy.any()) else torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    sampled = (~greedy).nonzero().flatten()
    if sampled.numel() == 0:
        return tokens, valid
    probs = torch.softmax(logits[sampled] / temperature[sampled, None], dim=-1)
    order = None
    if bool((top_p[sampled] < 1.0).any()):
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        probs = probs * ((probs.cumsum(-1) - probs) < top_p[sampled, None])
    cdf = probs.cumsum(-1)  # [S, V]; a row of NaN (or no mass) has no valid draw
    valid[sampled] = torch.isfinite(cdf[:, -1]) & (cdf[:, -1] > 0)
    uniform = torch.cat([torch.rand(1, generator=generators[i], device=probs.device) for i in sampled.tolist()])
    choice = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
    tokens[sampled] = choice.squeeze(-1) if order is None else order.gather(-1, choice).squeeze(-1)
    return tokens, valid
