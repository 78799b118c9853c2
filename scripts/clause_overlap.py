"""How much of each evaluation reference a model could have memorised from the training text.

    python scripts/clause_overlap.py [--data DIR] [--max 0.30] [--train FILE ...] [--eval SET=FILE ...]

A reference is cut into clauses at Chinese and ASCII punctuation (，。；：！？ and line breaks; the
enumeration comma 、 is kept inside clauses). A clause overlaps when it occurs verbatim anywhere in
the training text. A reference's overlap is the share of its clause characters that overlap; each
set reports the mean over its references and the share over all its clause characters. With the
defaults it reads the bundled data: training text = pretrain/train, sft/train and
preference/train (every string, rejected answers included); references = eval/qa answers and the
last assistant turn of each eval/dialogue conversation. Exits 1 when a set's mean exceeds --max.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterator

BUNDLED = Path(__file__).resolve().parents[1] / "chimed_ray" / "resources" / "data"
TRAIN_FILES = ("pretrain/train.jsonl", "sft/train.jsonl", "preference/train.jsonl")
EVAL_SETS = {"qa": "eval/qa.jsonl", "dialogue": "eval/dialogue.jsonl"}
SPLIT = re.compile(r"[，。；：！？,;:!?\n]+")


def clauses(text: str) -> list[str]:
    return [clause.strip() for clause in SPLIT.split(text) if clause.strip()]


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{path}:{number}: invalid JSON ({exc.msg})") from None


def training_text(paths: list[Path]) -> str:
    """Every string of every training row, joined by line breaks (a clause never spans two rows)."""
    return "\n".join(text for path in paths for row in _rows(path) for text in _strings(row))


def references(path: Path) -> list[str]:
    """The reference of each evaluation row: `answer` (QA) or the last assistant turn (dialogue)."""
    out = []
    for row in _rows(path):
        if isinstance(row.get("answer"), str):
            out.append(row["answer"])
        elif isinstance(row.get("conversations"), list):
            answers = [t["value"] for t in row["conversations"] if t.get("from") in ("gpt", "assistant")]
            if answers:
                out.append(answers[-1])
    if not out:
        raise SystemExit(f"{path}: no references (expected 'answer' or ShareGPT 'conversations')")
    return out


def overlap(reference: str, corpus: str) -> tuple[int, int]:
    """(overlapping clause characters, all clause characters) of one reference."""
    parts = clauses(reference)
    return sum(len(c) for c in parts if c in corpus), sum(len(c) for c in parts)


def measure(refs: list[str], corpus: str) -> dict[str, float]:
    counts = [overlap(ref, corpus) for ref in refs]
    shares = [hit / total for hit, total in counts if total]
    return {"references": len(refs), "mean": sum(shares) / max(len(shares), 1),
            "chars": sum(hit for hit, _ in counts) / max(sum(total for _, total in counts), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=BUNDLED, help="dataset root (default: the bundled data)")
    parser.add_argument("--train", nargs="*", default=None, help="training files (default: the bundled three)")
    parser.add_argument("--eval", nargs="*", default=None, help="SET=FILE pairs (default: qa and dialogue)")
    parser.add_argument("--max", type=float, default=0.30, help="largest acceptable mean overlap per set")
    args = parser.parse_args(argv)
    train = [Path(p) for p in args.train] if args.train else [args.data / name for name in TRAIN_FILES]
    sets = dict(item.split("=", 1) for item in args.eval) if args.eval else {k: str(args.data / v) for k, v in EVAL_SETS.items()}
    for path in [*train, *map(Path, sets.values())]:
        if not Path(path).is_file():
            raise SystemExit(f"{path}: file not found")
    corpus = training_text(train)
    failed = False
    print(f"{'set':10s} {'refs':>5s} {'mean overlap':>13s} {'char overlap':>13s}")
    for name, path in sets.items():
        result = measure(references(Path(path)), corpus)
        failed |= result["mean"] > args.max
        print(f"{name:10s} {result['references']:5d} {result['mean']:13.1%} {result['chars']:13.1%}")
    print(f"limit: mean overlap <= {args.max:.0%}: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
