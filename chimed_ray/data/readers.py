"""Read raw records from local files and directories: JSONL/JSON, text, CSV, parquet and saved HF
`datasets` directories. Every record remembers where it came from, so a bad one can be named."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from chimed_ray.utils.files import InputError, read_utf8

SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".parquet")


@dataclass
class Record:
    """One raw example and its origin (`file:line`, or `file#row` for tabular files)."""

    data: dict[str, Any]
    source: str


@dataclass
class ReadStats:
    """How many records were read and how many malformed ones were skipped."""

    read: int = 0
    skipped: int = 0


def expand_path(path: Path) -> list[Path]:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return [path]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise InputError(f"{path}: directory has no data files ({', '.join(SUFFIXES)})")
        return files
    if not path.exists():
        raise InputError(f"{path}: data file not found")
    if path.suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported data file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    return [path]


def _read_json_lines(path: Path, skip_bad: bool, stats: ReadStats) -> Iterator[Record]:
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        for index, item in enumerate(items):
            yield from _checked(item, f"{path}#{index}", skip_bad, stats)
        return
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            if not skip_bad:
                raise InputError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            stats.skipped += 1
            continue
        yield from _checked(item, f"{path}:{number}", skip_bad, stats)


def _lines(text: str) -> list[str]:
    """Lines split on "\n" only: JSON strings may hold a raw U+2028, which `splitlines` would cut."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _checked(item: Any, source: str, skip_bad: bool, stats: ReadStats) -> Iterator[Record]:
    if not isinstance(item, dict):
        if not skip_bad:
            raise InputError(f"{source}: expected a JSON object, got {type(item).__name__}")
        stats.skipped += 1
        return
    stats.read += 1
    yield Record(item, source)


def _read_table(path: Path, stats: ReadStats) -> Iterator[Record]:
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(read_utf8(path), newline="")))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        import datasets

        rows = datasets.load_from_disk(str(path))
        if isinstance(rows, datasets.DatasetDict):
            rows = rows["train"] if "train" in rows else next(iter(rows.values()))
    # Header is row 1 of a CSV, so data row i sits on line i + 2.
    offset = 2 if path.suffix == ".csv" else 0
    for index, row in enumerate(rows):
        stats.read += 1
        where = f"{path}:{index + offset}" if offset else f"{path}#{index}"
        yield Record(dict(row), where)


def _read_text(path: Path, stats: ReadStats) -> Iterator[Record]:
    """Plain text: blank-line-separated paragraphs become documents."""
    paragraph: list[str] = []
    start = 1
    for number, line in enumerate(_lines(read_utf8(path)), start=1):
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            stats.read += 1
            yield Record({"text": "\n".join(paragraph)}, f"{path}:{start}")
            paragraph = []
    if paragraph:
        stats.read += 1
        yield Record({"text": "\n".join(paragraph)}, f"{path}:{start}")


def iter_records(paths: list[str | Path], skip_bad_lines: bool = False, stats: ReadStats | None = None) -> Iterator[Record]:
    """Yield records from every file (directories expanded, sorted) in order."""
    stats = stats if stats is not None else ReadStats()
    if not paths:
        raise InputError("no data files given")
    for raw in paths:
        for path in expand_path(Path(raw)):
            if path.suffix in (".jsonl", ".json"):
                yield from _read_json_lines(path, skip_bad_lines, stats)
            elif path.suffix == ".txt":
                yield from _read_text(path, stats)
            else:
                yield from _read_table(path, stats)


def read_records(paths: list[str | Path], skip_bad_lines: bool = False, max_samples: int = 0) -> tuple[list[Record], ReadStats]:
    """Read all records (at most `max_samples` when > 0) and the read/skip counts."""
    stats = ReadStats()
    records = []
    for record in iter_records(paths, skip_bad_lines, stats):
        records.append(record)
        if max_samples and len(records) >= max_samples:
            break
    return records, stats
