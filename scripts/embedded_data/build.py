"""Regenerate the embedded default datasets under chimed_ray/resources/data/.

    python scripts/embedded_data/build.py [--out DIR]

Deterministic: every generator draws from its own seeded RNG, so the same fact table always yields
byte-identical files. The output directory is wiped and rewritten. Nothing is written unless the
data passes its checks: evaluation questions absent from training, the text checks of check.py
(doubled phrases, emergencies triaged), QA/dialogue references sharing under 30% of their clause
text with the training files (scripts/clause_overlap.py), preference pairs length-balanced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check  # noqa: E402
import gen_mcq  # noqa: E402
import gen_ner  # noqa: E402
import gen_preference  # noqa: E402
import gen_pretrain  # noqa: E402
import gen_sft  # noqa: E402
import readme  # noqa: E402
from common import write_jsonl  # noqa: E402
from gen_preference import chosen_longer_share  # noqa: E402
from facts import CAMI_ITEMS, DISEASES, DRUGS, LABS, MICA_ITEMS, SCALES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import clause_overlap  # noqa: E402

MAX_CLAUSE_OVERLAP = 0.30
TRAINING_FILES = ("pretrain/train.jsonl", "sft/train.jsonl", "preference/train.jsonl")
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
                exam = turn["value"] in "ABCDE"  # exam practice is answered with the letter
                if turn["from"] == "gpt" and not exam and not low <= len(turn["value"]) <= high:
                    raise ValueError(f"{name}: answer of {len(turn['value'])} chars: {turn['value']!r}")


def training_text(files: dict[str, list[dict]]) -> str:
    return "\n".join(text for name in TRAINING_FILES for row in files[name] for text in clause_overlap._strings(row))


def check_mcq_unseen(files: dict[str, list[dict]], corpus: str) -> None:
    """No MCQ or MedQA question text may appear in training data (facts may: that is pretraining)."""
    for name in ("eval/mcq.jsonl", "eval/mcq_dev.jsonl", "eval/medqa.jsonl"):
        for row in files[name]:
            if row["question"] in corpus:
                raise ValueError(f"{name}: question text appears in training data: {row['question']!r}")


def check_overlap(files: dict[str, list[dict]], corpus: str) -> dict[str, float]:
    """Mean clause overlap of the QA and dialogue references with the training text."""
    refs = {"qa": [row["answer"] for row in files["eval/qa.jsonl"]],
            "dialogue": [row["conversations"][-1]["value"] for row in files["eval/dialogue.jsonl"]]}
    means = {name: clause_overlap.measure(texts, corpus)["mean"] for name, texts in refs.items()}
    for name, value in means.items():
        if value > MAX_CLAUSE_OVERLAP:
            raise ValueError(f"eval/{name}: references share {value:.0%} of their clauses with training text "
                             f"(limit {MAX_CLAUSE_OVERLAP:.0%})")
    return means


def check_text(files: dict[str, list[dict]]) -> None:
    problems = check.check_files(files, tuple(d.name for d in DISEASES if d.urgent))
    if problems:
        listing = "\n".join(str(p) for p in problems[:20])
        raise ValueError(f"{len(problems)} text problems (first 20):\n{listing}")


def check_preference_balance(files: dict[str, list[dict]], low: float = 0.4, high: float = 0.6) -> None:
    for name in ("preference/train.jsonl", "preference/eval.jsonl"):
        share = chosen_longer_share(files[name])
        if not low <= share <= high:
            raise ValueError(f"{name}: chosen is longer in {share:.0%} of pairs (want {low:.0%}-{high:.0%})")


def generate() -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    files.update(gen_pretrain.build())
    mcq = gen_mcq.build()
    practice = mcq.pop("_practice")
    files.update(mcq)
    sft = gen_sft.build(practice)
    preference_keys = sft.pop("_preference_keys")
    files.update(sft)
    files.update(gen_preference.build(preference_keys))
    files.update(gen_ner.build())
    files.update(scale_rows())
    check_splits(files)
    check_answer_lengths(files)
    check_text(files)
    check_preference_balance(files)
    corpus = training_text(files)
    check_mcq_unseen(files, corpus)
    for name, value in check_overlap(files, corpus).items():
        print(f"clause overlap of eval/{name} references with training text: {value:.1%}")
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
