"""Train/eval record splits from a stage's DataConfig, falling back to the bundled data."""

from __future__ import annotations

import random

from chimed_ray.config import DataConfig
from chimed_ray.data.embedded import embedded_files
from chimed_ray.data.formats import Keys
from chimed_ray.data.readers import Record, read_records


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


def load_split(data: DataConfig, embedded_kind: str, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Read (train, eval) records.

    Train comes from `data.train_files` (default: the bundled `embedded_kind` set). Eval comes from
    `data.eval_files`, else a seeded `eval_fraction` split of train, else, for the bundled default,
    the bundled eval split.
    """
    bundled = not data.train_files
    train_files = data.train_files or embedded_files(embedded_kind, "train")
    train, stats = read_records(train_files, data.skip_bad_lines, data.max_samples)
    if stats.skipped:
        print(f"[chimed-ray data] skipped {stats.skipped} malformed records in {train_files}", flush=True)
    if data.eval_files:
        evaluation, _ = read_records(data.eval_files, data.skip_bad_lines)
    elif data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        cut = max(1, int(len(train) * data.eval_fraction))
        held = set(order[:cut])
        evaluation = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
    elif bundled:
        evaluation, _ = read_records(embedded_files(embedded_kind, "eval"))
    else:
        evaluation = []
    return train, evaluation
