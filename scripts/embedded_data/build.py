"""Regenerate the embedded default datasets under chimed_ray/resources/data/.

    python scripts/embedded_data/build.py [--out DIR]

Deterministic: every generator draws from its own seeded RNG, so the same fact table always yields
byte-identical files. The output directory is wiped and rewritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_mcq  # noqa: E402
import gen_ner  # noqa: E402
import gen_preference  # noqa: E402
import gen_pretrain  # noqa: E402
import gen_sft  # noqa: E402
import readme  # noqa: E402
from common import write_jsonl  # noqa: E402
from facts import CAMI_ITEMS, DISEASES, DRUGS, LABS, MICA_ITEMS, SCALES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "chimed_ray" / "resources" / "data"


def scale_rows() -> dict[str, list[dict]]:
    cami = [{"id": i, "subscale": sub, "reverse": rev, "text": text}
            for i, (sub, rev, text) in enumerate(CAMI_ITEMS, start=1)]
    mica = [{"id": i, "subscale": "total", "reverse": rev, "text": text}
            for i, (rev, text) in enumerate(MICA_ITEMS, start=1)]
    return {"eval/cami.jsonl": cami, "eval/mica.jsonl": mica}


def human_turns(rows: list[dict]) -> set[str]:
    return {turn["value"] for row in rows for turn in row["conversations"] if turn["from"] == "human"}


def check_splits(files: dict[str, list[dict]]) -> None:
    """Fail the build if an evaluation question also appears in the matching training data."""
    train_humans = human_turns(files["sft/train.jsonl"])
    for row in files["sft/eval.jsonl"] + files["eval/dialogue.jsonl"]:
        first = row["conversations"][0]["value"]
        if first in train_humans:
            raise ValueError(f"evaluation conversation also in sft/train: {first!r}")
    for row in files["eval/qa.jsonl"]:
        if row["question"] in train_humans:
            raise ValueError(f"eval/qa question also in sft/train: {row['question']!r}")
    train_prompts = {row["prompt"] for row in files["preference/train.jsonl"]}
    for row in files["preference/eval.jsonl"]:
        if row["prompt"] in train_prompts:
            raise ValueError(f"preference eval prompt also in preference train: {row['prompt']!r}")
    dev = {row["question"] for row in files["eval/mcq_dev.jsonl"]}
    for row in files["eval/mcq.jsonl"]:
        if row["question"] in dev:
            raise ValueError(f"MCQ question in both mcq.jsonl and mcq_dev.jsonl: {row['question']!r}")


def check_answer_lengths(files: dict[str, list[dict]], low: int = 30, high: int = 200) -> None:
    for name in ("sft/train.jsonl", "sft/eval.jsonl", "eval/dialogue.jsonl"):
        for row in files[name]:
            for turn in row["conversations"]:
                if turn["from"] == "gpt" and not low <= len(turn["value"]) <= high:
                    raise ValueError(f"{name}: answer of {len(turn['value'])} chars: {turn['value']!r}")


def generate() -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    files.update(gen_pretrain.build())
    sft = gen_sft.build()
    preference_keys = sft.pop("_preference_keys")
    files.update(sft)
    files.update(gen_preference.build(preference_keys))
    files.update(gen_mcq.build())
    files.update(gen_ner.build())
    files.update(scale_rows())
    check_splits(files)
    check_answer_lengths(files)
    return files


def wipe(out: Path, expected: set[str]) -> None:
    """Remove a previous build; refuse if the directory holds anything this script did not write."""
    if not out.exists():
        return
    found = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    foreign = sorted(found - expected)
    if foreign:
        raise SystemExit(f"refusing to wipe {out}: it holds files this build does not write: {foreign[:5]}")
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (wiped first)")
    out: Path = parser.parse_args().out
    files = generate()
    wipe(out, set(files) | {"README.md", "eval/scales.json"})
    sizes = {name: write_jsonl(out / name, rows) for name, rows in sorted(files.items())}
    (out / "eval" / "scales.json").write_text(json.dumps(SCALES, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    counts = {name: len(rows) for name, rows in files.items()}
    facts = {"diseases": len(DISEASES), "drugs": len(DRUGS), "labs": len(LABS)}
    (out / "README.md").write_text(readme.render(counts, sizes, facts), encoding="utf-8")
    total = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    for name in sorted(sizes):
        print(f"{name:28s} {counts[name]:6d} rows {sizes[name] / 1024:8.1f} KiB")
    print(f"{'total':28s} {total / 1024:20.1f} KiB  ({facts})")


if __name__ == "__main__":
    main()
