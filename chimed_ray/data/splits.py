"""Train/eval record splits from a stage's DataConfig, falling back to the bundled data.

Every record is parsed in its stage's shape (document, dialogue, preference pair) as it is read,
so a malformed one fails with its `file:line`, or is skipped and counted with
`data.skip_bad_lines=true`. The driver runs the same check before any worker starts
(`check_split`), so a bad file never reaches Ray Train's retry loop.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from chimed_ray.config import DataConfig
from chimed_ray.data.embedded import embedded_files
from chimed_ray.data.formats import Keys, to_messages, to_preference, to_text
from chimed_ray.data.readers import ReadStats, Record, expand_path, iter_records, read_records
from chimed_ray.utils.files import InputError

RecordCheck = Callable[[Record], Any]
# Above this many bytes of data the driver checks a sample (the first records) instead of all.
FULL_CHECK_BYTES, SAMPLE_RECORDS = 1 * 2**30, 10_000


def keys_of(data: DataConfig) -> Keys:
    """The key names a DataConfig chooses for key-configurable formats."""
    return Keys(
        input_key=data.input_key,
        output_key=data.output_key,
        messages_key=data.messages_key,
        prompt_key=data.prompt_key,
        chosen_key=data.chosen_key,
        rejected_key=data.rejected_key,
    )


def record_check(data: DataConfig, kind: str) -> RecordCheck:
    """The parse a record of `kind` (pretrain, sft, preference) must pass to be usable."""
    keys = keys_of(data)
    if kind == "pretrain":
        return lambda record: to_text(record, data.format, keys)
    if kind == "preference":
        return lambda record: to_preference(record, keys)
    return lambda record: to_messages(record, data.format, keys)


def checked(records: Iterable[Record], check: RecordCheck, skip_bad: bool, stats: ReadStats) -> Iterator[Record]:
    """The records that pass `check`; a failing one raises InputError naming its `file:line`,
    or, with `skip_bad`, is dropped and counted in `stats.skipped`."""
    for record in records:
        try:
            _parse(check, record)
        except InputError:
            if not skip_bad:
                raise
            stats.skipped += 1
            continue
        yield record


def _parse(check: RecordCheck, record: Record) -> None:
    try:
        check(record)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an odd value must still fail naming its record
        raise InputError(f"{record.source}: malformed record ({type(exc).__name__}: {exc})") from None


def _read(files: list, data: DataConfig, check: RecordCheck, max_samples: int = 0) -> list[Record]:
    records, stats = read_records(files, data.skip_bad_lines, max_samples)
    records = list(checked(records, check, data.skip_bad_lines, stats))
    if stats.skipped:
        print(f"[chimed-ray data] skipped {stats.skipped} malformed records in {[str(f) for f in files]}", flush=True)
    return records


def load_split(
    data: DataConfig, embedded_kind: str, seed: int = 0, check: RecordCheck | None = None
) -> tuple[list[Record], list[Record]]:
    """Read (train, eval) records that pass `check` (default: the `embedded_kind` parse).

    Train comes from `data.train_files` (default: the bundled `embedded_kind` set). Eval comes from
    `data.eval_files`, else a seeded `eval_fraction` split of train, else, for the bundled default,
    the bundled eval split.
    """
    check = check or record_check(data, embedded_kind)
    bundled = not data.train_files
    train = _read(data.train_files or embedded_files(embedded_kind, "train"), data, check, data.max_samples)
    if data.eval_files:
        evaluation = _read(data.eval_files, data, check)
    elif data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[: held_out(len(train), data.eval_fraction)])
        evaluation = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
    elif bundled:
        evaluation, _ = read_records(embedded_files(embedded_kind, "eval"))
    else:
        evaluation = []
    return train, evaluation


def held_out(total: int, eval_fraction: float) -> int:
    """How many of `total` train records an `eval_fraction` split holds out."""
    return max(1, int(total * eval_fraction)) if eval_fraction > 0 else 0


def check_split(data: DataConfig, kind: str) -> int | None:
    """Driver-side check of a stage's data before any worker starts, streaming (nothing is kept):
    every record, or above FULL_CHECK_BYTES the first SAMPLE_RECORDS of each file, must parse in
    the stage's shape. Returns the number of training records, or None when only sampled."""
    files = data.train_files + data.eval_files
    if any("://" in str(path) for path in files):
        return None  # remote data is read by the workers only
    local = [file for path in files for file in expand_path(Path(path))]
    check = record_check(data, kind)
    if sum(_size(file) for file in local) > FULL_CHECK_BYTES:
        for path in local:
            _count_passing(itertools.islice(iter_records([path], data.skip_bad_lines), SAMPLE_RECORDS), data, check)
        return None
    if data.eval_files:
        _count_passing(iter_records(data.eval_files, data.skip_bad_lines), data, check)
    train = iter_records(data.train_files or embedded_files(kind, "train"), data.skip_bad_lines)
    total = _count_passing(itertools.islice(train, data.max_samples or None), data, check)
    return total if data.eval_files else total - held_out(total, data.eval_fraction)


def _count_passing(records: Iterable[Record], data: DataConfig, check: RecordCheck) -> int:
    return sum(1 for _ in checked(records, check, data.skip_bad_lines, ReadStats()))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
