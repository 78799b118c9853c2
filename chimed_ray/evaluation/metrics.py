"""Metric functions: option choice, accuracy, entity P/R/F1, character-level BLEU and ROUGE for Chinese.

BLEU comes from sacrebleu and ROUGE from rouge-score; neither is re-implemented here. Both see the
same tokens: sacrebleu's `zh` tokenizer, which splits every CJK character into its own token and
keeps Latin words and numbers whole ("做CT检查" -> "做 CT 检 查"), the usual character-level setup
for Chinese generation (ChiMed-GPT reports BLEU-1/2 and ROUGE-1/2/L this way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence


def choose_option(option_logprobs: Sequence[float]) -> int:
    """Index of the option with the highest log-probability (the first one on ties).

    Raises:
        ValueError: no log-probabilities were given.
    """
    if not option_logprobs:
        raise ValueError("choose_option: no option log-probabilities")
    best = 0
    for index, value in enumerate(option_logprobs):
        if value > option_logprobs[best]:
            best = index
    return best


def accuracy(correct: Iterable[bool]) -> float:
    """Fraction of True values (0.0 for an empty sequence)."""
    values = list(correct)
    return sum(values) / len(values) if values else 0.0


@dataclass
class PRF:
    """Precision, recall and F1 from true-positive, false-positive and false-negative counts."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def entity_prf(
    predicted: Sequence[set[tuple[str, str]]], gold: Sequence[set[tuple[str, str]]]
) -> tuple[PRF, dict[str, PRF]]:
    """Micro P/R/F1 over documents, and per entity type, by exact match of (text, type) pairs.

    Args:
        predicted: per document, the set of predicted `(entity text, type)` pairs.
        gold: per document, the set of gold pairs.

    Returns:
        The micro-averaged counts and a mapping type -> counts (types seen in either side).
    """
    if len(predicted) != len(gold):
        raise ValueError(f"entity_prf: {len(predicted)} predicted documents vs {len(gold)} gold")
    micro = PRF()
    by_type: dict[str, PRF] = {}
    for pred_doc, gold_doc in zip(predicted, gold):
        for pairs, attr in ((pred_doc & gold_doc, "tp"), (pred_doc - gold_doc, "fp"), (gold_doc - pred_doc, "fn")):
            for _, label in pairs:
                counts = by_type.setdefault(label, PRF())
                setattr(counts, attr, getattr(counts, attr) + 1)
                setattr(micro, attr, getattr(micro, attr) + 1)
    return micro, dict(sorted(by_type.items()))


@lru_cache(maxsize=1)
def _zh_tokenizer():
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    return TokenizerZh()


def char_tokens(text: str) -> list[str]:
    """Character-level tokens of Chinese text (Latin words and numbers stay whole)."""
    return _zh_tokenizer()(text.strip()).split()


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..`max_order` (cumulative, in 0-100) with sacrebleu's `zh` tokenization.

    BLEU-n is the brevity-penalised geometric mean of the 1..n-gram precisions, as in sacrebleu
    with `max_ngram_order=n`.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    scores = {}
    for order in range(1, max_order + 1):
        metric = BLEU(tokenize="zh", max_ngram_order=order)
        scores[f"bleu{order}"] = float(metric.corpus_score(list(hypotheses), [list(references)]).score)
    return scores


class _CharTokenizer:
    """rouge-score tokenizer hook: its default keeps only [a-z0-9] and would drop every Chinese char."""

    def tokenize(self, text: str) -> list[str]:
        return char_tokens(text)


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-100) over pairs, on character tokens, via rouge-score."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=_CharTokenizer())
    totals = dict.fromkeys(types, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        result = scorer.score(reference, hypothesis)  # rouge-score takes (target, prediction)
        for name in types:
            totals[name] += result[name].fmeasure
    count = max(len(hypotheses), 1)
    return {name: 100.0 * total / count for name, total in totals.items()}


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, NaN for an empty sequence (so a missing score is never read as 0)."""
    return sum(values) / len(values) if values else math.nan
