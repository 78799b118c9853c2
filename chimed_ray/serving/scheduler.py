"""Continuous batching: iteration-level scheduling of rows over one model (Orca, OSDI '22; TGI).

One thread owns the model. Each iteration it
1. ends rows whose client left or whose deadline passed (they leave the batch at once),
2. admits waiting rows while there are free slots, up to `max_prefill_tokens` prompt tokens, and
   prefills them (at least one row per iteration, so a long prompt cannot starve),
3. runs one decode step for every live row, and
4. retires finished rows, resolving a submission's future once all of its rows are done.
So a new request joins the running batch at the next step, and prefill and decode alternate: no
iteration runs more than one prefill chunk before the decode step that every live row shares.

A failure stays with its row: sampling, seeding and penalties run per row (`RowState.fail`), and a
prefill that raises is retried row by row. Only a decode forward that raises fails the rows in it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from chimed_ray.serving.row_batch import RowBatch, concat_rows, restorable, select_rows
from chimed_ray.serving.sampling import PenaltyBatch, RowState, apply_penalties, make_generator, sample_rows

logger = logging.getLogger("ray.serve")


class StepModel(Protocol):
    """The two forwards the scheduler needs (see `HFEngine`)."""

    device: torch.device | str
    eos_ids: set[int]

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, RowBatch]:
        """Logits of each prompt's last position [N, V] and the new rows' batch."""

    def decode(self, batch: RowBatch, tokens: torch.Tensor) -> tuple[torch.Tensor, RowBatch]:
        """Feed `tokens` [B]; logits [B, V] and the grown batch."""

    def decode_text(self, ids: list[int]) -> str:
        """Token ids to text."""


@dataclass
class _Submission:
    rows: list[RowState]
    future: Future
    remaining: int


@dataclass
class _Slot:
    """A live row: its submission, RNG, token statistics and the token it feeds next."""

    row: RowState
    submission: _Submission
    generator: Optional[torch.Generator] = None
    seen: Optional[torch.Tensor] = None  # [V] bool: in the prompt or generated (repetition penalty)
    counts: Optional[torch.Tensor] = None  # [V]: times generated (frequency/presence), if the row uses them
    next_token: int = 0
    released: bool = False  # counted as done in its submission

    def start(self, logits: torch.Tensor) -> None:
        """The row's RNG and token statistics, made when its first logits [V] arrive (a bad seed
        fails this row only)."""
        self.generator = make_generator(self.row.seed, logits.device)
        row = self.row
        if row.repetition_penalty != 1.0 or row.frequency_penalty or row.presence_penalty:
            self.seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            self.seen[torch.tensor(row.prompt_ids, dtype=torch.long, device=logits.device)] = True
        if row.frequency_penalty or row.presence_penalty:
            self.counts = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)

    def record(self, token: int) -> None:
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1


@dataclass
class SchedulerStats:
    steps: int = 0
    prefills: int = 0
    largest_batch: int = 0
    rows_failed: int = 0
    last_progress: float = field(default_factory=time.monotonic)


class ContinuousBatcher:
    """Runs rows through `model` on a background thread; `submit` returns a Future per submission."""

    def __init__(self, model: StepModel, max_rows: int, max_prefill_tokens: int, stall_timeout_s: float):
        self.model = model
        self.max_rows = max_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.stall_timeout_s = stall_timeout_s
        self.stats = SchedulerStats()
        self._waiting: collections.deque[_Slot] = collections.deque()
        self._live: list[_Slot] = []
        self._admitting: list[_Slot] = []  # out of the queue, not yet in the batch
        self._batch: Optional[RowBatch] = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list[RowState]) -> Future:
        """Queue `rows`; the Future resolves (to None) once every one of them has finished."""
        future: Future = Future()
        submission = _Submission(rows, future, len(rows))
        with self._wake:
            self._waiting.extend(_Slot(row, submission) for row in rows)
            self._wake.notify()
        return future

    @property
    def live_rows(self) -> int:
        """Rows in the running batch right now."""
        return len(self._live)

    def check_health(self) -> None:
        """Raise if the thread died, or holds work without progress for `stall_timeout_s`."""
        if not self._thread.is_alive() and not self._closed:
            raise RuntimeError("the generation thread has died")
        stalled = time.monotonic() - self.stats.last_progress
        if (self._live or self._waiting) and stalled > self.stall_timeout_s:
            raise RuntimeError(f"the generation thread made no progress for {stalled:.0f} s "
                               f"(engine.stall_timeout_s={self.stall_timeout_s:g})")

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._live or self._closed):
                    self._wake.wait()
                    self.stats.last_progress = time.monotonic()  # idle is not stuck
                if self._closed:
                    return
            try:
                self._iteration()
            except Exception:  # a bug here must not kill the thread: fail what it held, go on
                logger.exception("continuous batcher iteration failed")
                live = {id(slot) for slot in self._live}
                stranded = [slot for slot in self._admitting if id(slot) not in live]
                self._fail(self._live + stranded, "scheduler error")
                self._retire()
                for slot in stranded:
                    self._done(slot)
            self._admitting = []
            self.stats.last_progress = time.monotonic()

    def _iteration(self) -> None:
        for slot in self._live:
            if slot.row.cancelled:
                slot.row.abort()
        self._retire()
        admitted = self._admitting = self._admit()
        if admitted:
            self._prefill(admitted)
            self._retire()
        if self._live:
            self._decode()
            self._retire()

    def _admit(self) -> list[_Slot]:
        """Waiting rows that fit the free slots and the prefill budget (always one if a slot is free)."""
        admitted, tokens = [], 0
        with self._wake:
            while self._waiting and len(self._live) + len(admitted) < self.max_rows:
                slot = self._waiting[0]
                if slot.row.cancelled:
                    self._waiting.popleft()
                    slot.row.abort()
                    self._done(slot)
                    continue
                if admitted and tokens + len(slot.row.prompt_ids) > self.max_prefill_tokens:
                    break
                admitted.append(self._waiting.popleft())
                tokens += len(slot.row.prompt_ids)
        return admitted

    def _prefill(self, admitted: list[_Slot]) -> None:
        """Prefill the admitted rows together, or one by one if that raises; join them to the batch."""
        try:
            groups = [(admitted, *self.model.prefill([s.row.prompt_ids for s in admitted]))]
        except Exception:
            logger.exception("prefill of %d rows failed; retrying them one by one", len(admitted))
            groups = []
            for slot in admitted:
                try:
                    groups.append(([slot], *self.model.prefill([slot.row.prompt_ids])))
                except Exception as exc:
                    self._fail([slot], f"prefill failed: {exc!r}")
                    self._done(slot)
        for slots, logits, batch in groups:
            self.stats.prefills += 1
            self._sample(slots, logits)
            self._live.extend(slots)
            self._batch = concat_rows(self._batch, batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(self._live))

    def _decode(self) -> None:
        tokens = torch.tensor([slot.next_token for slot in self._live], dtype=torch.long, device=self.model.device)
        restore = restorable(self._batch)
        try:
            logits, self._batch = self.model.decode(self._batch, tokens)
        except Exception:
            logger.exception("decode step over %d rows failed; retrying them one by one", len(self._live))
            logits = self._decode_alone(restore(), tokens)
        self.stats.steps += 1
        self._sample(self._live, logits)

    def _decode_alone(self, batch: RowBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Each live row's step on its own after a failed batched step: a row that fails again
        fails alone and leaves; the others form the batch again. Returns their logits."""
        kept, logits, grown = [], [], None
        for index, slot in enumerate(self._live):
            try:
                row_logits, row = self.model.decode(select_rows(batch, [index]), tokens[index:index + 1])
            except Exception as exc:
                self._fail([slot], f"decode failed: {exc!r}")
                self._done(slot)
                continue
            kept.append(slot)
            logits.append(row_logits)
            grown = concat_rows(grown, row)
        self._live, self._batch = kept, grown
        return torch.cat(logits) if logits else torch.empty(0)

    def _sample(self, slots: list[_Slot], logits: torch.Tensor) -> None:
        """Draw and feed one token per unfinished row of `logits` [len(slots), V], all rows at once;
        if that raises, row by row, so whatever goes wrong fails only the row it belongs to."""
        for slot in slots:
            if slot.generator is None and not slot.row.finished:
                try:
                    slot.start(logits[0])
                except Exception as exc:
                    self._fail([slot], f"sampling setup failed: {exc!r}")
        index = [i for i, slot in enumerate(slots) if not slot.row.finished]
        try:
            self._draw([slots[i] for i in index], logits[index])
        except Exception:
            for i in index:
                try:
                    self._draw([slots[i]], logits[i:i + 1])
                except Exception as exc:
                    self._fail([slots[i]], f"sampling failed: {exc!r}")

    def _draw(self, slots: list[_Slot], logits: torch.Tensor) -> None:
        if not slots:
            return
        rows = [slot.row for slot in slots]
        device = logits.device

        if any(slot.seen is not None for slot in slots):
            logits = apply_penalties(logits, self._penalties(slots, logits))
        no_eos = [i for i, row in enumerate(rows) if row.ignore_eos]
        if no_eos and self.model.eos_ids:
            eos = torch.tensor(sorted(self.model.eos_ids), device=device)
            logits[torch.tensor(no_eos, device=device)[:, None], eos] = float("-inf")
        tokens, valid = sample_rows(logits, _floats([row.temperature for row in rows], device),
                                    _floats([row.top_p for row in rows], device), [slot.generator for slot in slots])
        for slot, token, ok in zip(slots, tokens.tolist(), valid.tolist()):
            if not ok:
                self._fail([slot], "sampling failed: non-finite probabilities")
                continue
            try:
                slot.next_token = token
                slot.record(token)
                slot.row.add_token(token, self.model.decode_text, self.model.eos_ids)
            except Exception as exc:
                self._fail([slot], f"feeding the token failed: {exc!r}")

    @staticmethod
    def _penalties(slots: list[_Slot], logits: torch.Tensor) -> PenaltyBatch:
        none = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        counts = None
        if any(slot.counts is not None for slot in slots):
            zero = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
            counts = torch.stack([zero if slot.counts is None else slot.counts for slot in slots])
        return PenaltyBatch(
            repetition=_floats([slot.row.repetition_penalty for slot in slots], logits.device),
            frequency=_floats([slot.row.frequency_penalty for slot in slots], logits.device),
            presence=_floats([slot.row.presence_penalty for slot in slots], logits.device),
            seen=torch.stack([none if slot.seen is None else slot.seen for slot in slots]),
            counts=counts,
        )

    def _fail(self, slots: list[_Slot], error: str) -> None:
        for slot in slots:
            if not slot.row.finished:
                self.stats.rows_failed += 1
                logger.error("row %d failed: %s", slot.row.choice_index, error)
                _quietly(slot.row.fail, error)

    def _retire(self) -> None:
        """Drop finished rows from the batch at once and resolve completed submissions."""
        keep = [i for i, slot in enumerate(self._live) if not slot.row.finished]
        if len(keep) == len(self._live):
            return
        finished = [slot for slot in self._live if slot.row.finished]
        self._batch = select_rows(self._batch, keep) if self._batch is not None else None
        self._live = [self._live[i] for i in keep]
        for slot in finished:  # resolved after they left, so a caller never sees its rows still live
            self._done(slot)

    def _done(self, slot: _Slot) -> None:
        if slot.released:
            return
        slot.released = True
        submission = slot.submission
        submission.remaining -= 1
        if submission.remaining == 0 and not submission.future.done():
            submission.future.set_result(None)


def _floats(values: list[float], device: torch.device | str) -> torch.Tensor:
    """One float32 value per row, on the logits' device."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def _quietly(call: Callable[..., Any], *args: Any) -> None:
    """Run a row callback whose own failure (a streaming listener on a closed loop) must not spread."""
    try:
        call(*args)
    except Exception:
        logger.exception("row callback failed")
