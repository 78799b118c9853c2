"""What flows through an evaluation: file records in, requests to a model, responses, task results.

A task turns its records into `EvalRequest`s. A request either asks for the next-token
log-probabilities of a few option labels (`options` non-empty: MCQ letters, scale digits) or for a
greedy completion (`options` empty). Backends answer with `EvalResponse`s keyed by `uid`, so the
same requests can run in-process, on a Ray Data actor pool or against an OpenAI endpoint.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from chimed_ray.utils.files import InputError


@dataclass
class EvalRequest:
    """One prompt for a model. `messages` are chat turns rendered by the tokenizer's template."""

    uid: str  # "<task>/<item index>", unique within one model's run
    messages: list[dict[str, str]]
    options: list[str] = field(default_factory=list)  # labels to score; empty means generate
    max_new_tokens: int = 0

    @property
    def kind(self) -> str:
        return "choice" if self.options else "generate"

    def to_row(self) -> dict[str, Any]:
        """Flat row for Ray Data (nested lists of dicts travel as JSON strings)."""
        return {
            "uid": self.uid,
            "messages": json.dumps(self.messages, ensure_ascii=False),
            "options": json.dumps(self.options, ensure_ascii=False),
            "max_new_tokens": self.max_new_tokens,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EvalRequest":
        return cls(
            uid=str(row["uid"]),
            messages=json.loads(row["messages"]),
            options=json.loads(row["options"]),
            max_new_tokens=int(row["max_new_tokens"]),
        )


@dataclass
class EvalResponse:
    """A model's answer: the generated text, or one log-probability per requested option."""

    uid: str
    text: str = ""
    option_logprobs: list[float] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        return {"uid": self.uid, "text": self.text, "option_logprobs": json.dumps(self.option_logprobs)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EvalResponse":
        return cls(uid=str(row["uid"]), text=str(row["text"]), option_logprobs=json.loads(row["option_logprobs"]))


@dataclass
class TaskResult:
    """Scores of one task for one model: headline `metrics`, `breakdown` tables, per-item rows."""

    metrics: dict[str, float]
    breakdown: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Record:
    """A raw input record plus where it came from, so errors can say `file:line`."""

    data: dict[str, Any]
    source: str  # "path:line"


def iter_records(path: str | Path) -> Iterator[Record]:
    """Read a `.jsonl`, `.json` (a list of objects) or `.csv` file as records.

    Raises:
        InputError: the file is missing or a line is not a JSON object, naming `path:line`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: evaluation file not found")
    if path.suffix == ".csv":
        yield from _iter_csv(path)
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for index, item in enumerate(data):
            yield Record(_require_object(item, f"{path}[{index}]"), f"{path}[{index}]")
    else:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
                yield Record(_require_object(item, where), where)


def _iter_csv(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        # Row 1 is the header, so data row i sits on line i + 1.
        for line_number, row in enumerate(reader, 2):
            yield Record({(k or "").strip(): (v or "").strip() for k, v in row.items()}, f"{path}:{line_number}")


def _require_object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def require_field(record: Record, name: str, kind: type = str) -> Any:
    """`record.data[name]` if present and of type `kind`, else an InputError naming file:line and field."""
    if name not in record.data:
        raise InputError(f"{record.source}: missing field {name!r} (has {sorted(record.data)})")
    value = record.data[name]
    if not isinstance(value, kind):
        raise InputError(
            f"{record.source}: field {name!r} should be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def lookup(responses: dict[str, EvalResponse], uid: str) -> EvalResponse:
    """The response for `uid`; a missing one is a backend bug, so it fails loudly."""
    if uid not in responses:
        raise KeyError(f"no model response for request {uid!r} ({len(responses)} responses received)")
    return responses[uid]


def read_records(paths: list[Path], max_items: int = 0) -> list[Record]:
    """The records of `paths` in order; with `max_items` > 0, an evenly spaced sample of that many.

    Files are often grouped (by subject, by subscale), so a sample spread over the whole file keeps
    every group where the first `max_items` records would keep only the first group.

    Raises:
        InputError: the files hold no record at all (a task with nothing to score is a mistake).
    """
    records = [record for path in paths for record in iter_records(path)]
    if not records:
        raise InputError(f"{', '.join(str(p) for p in paths)}: no records to evaluate")
    if 0 < max_items < len(records):
        records = [records[i * len(records) // max_items] for i in range(max_items)]
    return records
