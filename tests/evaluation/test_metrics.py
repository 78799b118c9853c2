"""Metric functions on hand-worked examples, BLEU/ROUGE cross-checked against the libraries."""

from __future__ import annotations

import math

import pytest

from chimed_ray.evaluation.metrics import (
    PRF,
    accuracy,
    bleu_scores,
    char_tokens,
    choose_option,
    entity_prf,
    rouge_scores,
)

HYP, REF = "患者多喝水", "患者应多喝水"


def test_choose_option_picks_highest_logprob_first_on_ties():
    assert choose_option([-2.3, -0.1, -1.7, -4.0]) == 1
    assert choose_option([-1.0, -3.0, -1.0]) == 0
    assert choose_option([-9.0]) == 0
    with pytest.raises(ValueError):
        choose_option([])


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0


def test_char_tokens_split_cjk_keep_latin_words():
    assert char_tokens("做CT检查，查 HbA1c") == ["做", "CT", "检", "查", "，", "查", "HbA1c"]


def test_bleu_hand_worked():
    # 5 hypothesis chars, all in the 6-char reference: p1 = 5/5; bigrams 患者/者多/多喝/喝水 vs the
    # reference's 患者/者应/应多/多喝/喝水 -> p2 = 3/4; brevity penalty exp(1 - 6/5).
    scores = bleu_scores([HYP], [REF])
    bp = math.exp(1 - 6 / 5)
    assert scores["bleu1"] == pytest.approx(100 * bp, abs=1e-2)
    assert scores["bleu2"] == pytest.approx(100 * bp * math.sqrt(1 * 3 / 4), abs=1e-2)
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"}


def test_bleu_matches_sacrebleu_directly():
    import sacrebleu

    hyps = ["建议多喝水，注意休息。", "可以口服布洛芬退烧", "做个头部CT检查"]
    refs = ["多喝水，注意休息，必要时就医。", "可口服布洛芬或对乙酰氨基酚退烧", "建议头部CT检查"]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    assert bleu_scores(hyps, refs)["bleu4"] == pytest.approx(expected)
    assert bleu_scores(refs, refs)["bleu4"] == pytest.approx(100.0)


def test_rouge_hand_worked():
    # LCS and unigram overlap are both 5: P = 5/5, R = 5/6; bigram overlap 3: P = 3/4, R = 3/5.
    scores = rouge_scores([HYP], [REF])
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert scores["rouge1"] == pytest.approx(100 * f1(1, 5 / 6))
    assert scores["rouge2"] == pytest.approx(100 * f1(3 / 4, 3 / 5))
    assert scores["rougeL"] == pytest.approx(100 * f1(1, 5 / 6))


def test_rouge_matches_rouge_score_on_space_joined_chars():
    from rouge_score import rouge_scorer, tokenizers

    class Whitespace(tokenizers.Tokenizer):
        def tokenize(self, text):
            return text.split()

    hyps = ["建议多喝水，注意休息。", "做个头部CT检查"]
    refs = ["多喝水，注意休息，必要时就医。", "建议头部CT检查"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Whitespace())
    joined = [scorer.score(" ".join(char_tokens(r)), " ".join(char_tokens(h)))["rougeL"].fmeasure
              for h, r in zip(hyps, refs)]
    assert rouge_scores(hyps, refs)["rougeL"] == pytest.approx(100 * sum(joined) / 2)


def test_entity_prf_counted_by_hand():
    gold = [{("胃癌", "疾病和诊断"), ("CT", "影像检查")}, {("奥美拉唑", "药物")}]
    predicted = [{("胃癌", "疾病和诊断"), ("CT", "药物")}, {("奥美拉唑", "药物"), ("腹部", "解剖部位")}]
    micro, by_type = entity_prf(predicted, gold)
    # TP: 胃癌, 奥美拉唑; FP: CT/药物, 腹部; FN: CT/影像检查.
    assert (micro.tp, micro.fp, micro.fn) == (2, 2, 1)
    assert micro.precision == pytest.approx(0.5)
    assert micro.recall == pytest.approx(2 / 3)
    assert micro.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (by_type["药物"].tp, by_type["药物"].fp, by_type["药物"].fn) == (1, 1, 0)
    assert by_type["影像检查"].f1 == 0.0 and by_type["影像检查"].fn == 1
    assert list(by_type) == sorted(by_type)


def test_prf_empty_is_zero_not_nan():
    assert PRF().as_dict()["f1"] == 0.0
