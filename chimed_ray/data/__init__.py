"""Readers, formats and tokenization for every stage's data."""

from chimed_ray.data.embedded import embedded_files, embedded_path
from chimed_ray.data.formats import Keys, PreferencePair, detect_format, parse_chimed, to_messages, to_preference, to_text
from chimed_ray.data.readers import Record, ReadStats, iter_records, read_records
from chimed_ray.data.splits import load_split
from chimed_ray.data.tokenize import (
    IGNORE_INDEX,
    LMBatch,
    collate_lm,
    dialogue_segments,
    pack_documents,
    pack_examples,
    tokenize_dialogue,
)

__all__ = [
    "IGNORE_INDEX",
    "Keys",
    "LMBatch",
    "PreferencePair",
    "ReadStats",
    "Record",
    "collate_lm",
    "detect_format",
    "dialogue_segments",
    "embedded_files",
    "embedded_path",
    "iter_records",
    "load_split",
    "pack_documents",
    "pack_examples",
    "parse_chimed",
    "read_records",
    "to_messages",
    "to_preference",
    "to_text",
    "tokenize_dialogue",
]
