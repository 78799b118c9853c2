"""DPO's pure pieces on hand-worked numbers: answer-only log-probabilities, the per-loss wiring
(sums vs averages, ORPO's added NLL), batch layout, the reference cache and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from chimed_ray.config import ConfigError, load_config
from chimed_ray.config.dpo import DPOConfig
from chimed_ray.data import IGNORE_INDEX
from chimed_ray.trainers.dpo import (
    PreferenceExample,
    answer_logprobs,
    attach_reference_logps,
    collate_pairs,
    pair_loss,
    read_reference_cache,
    write_reference_cache,
)
from chimed_ray.utils.files import InputError

LN3 = math.log(3.0)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_answer_logprobs_sum_only_answer_tokens_by_hand():
    # Row 0: tokens [0, 1, 0, 1], the last two are the answer. Position t predicts token t + 1:
    #   position 1 predicts token 0 with logits [ln 3, 0] -> p = 3/4
    #   position 2 predicts token 1 with logits [0, 0]    -> p = 1/2
    #   position 0 predicts a prompt token: ignored even though its logits are absurd.
    # Sum = log(3/4) + log(1/2) = log(3/8), over 2 answer tokens.
    # Row 1: a one-token answer at position 1, predicted by position 0 with logits [0, ln 3] -> log(3/4).
    logits = torch.tensor(
        [
            [[1e4, -1e4], [LN3, 0.0], [0.0, 0.0], [7.0, 7.0]],
            [[0.0, LN3], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, 1], [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]])
    sums, counts = answer_logprobs(logits, labels)
    assert_close(sums, torch.tensor([math.log(3 / 8), math.log(3 / 4)]))
    assert counts.tolist() == [2, 1]


def test_answer_logprobs_gradient_reaches_only_answer_positions():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    sums, _ = answer_logprobs(logits, labels)
    sums.sum().backward()
    # d log softmax(z)_1 / dz at z = 0 is (-1/2, +1/2), at position 1 only.
    assert_close(logits.grad, torch.tensor([[[0.0, 0.0], [-0.5, 0.5], [0.0, 0.0]]]))


def test_pair_loss_dpo_uses_sums_against_the_reference():
    # chosen log-ratio -2 - (-3) = 1, rejected -5 - (-4) = -1; beta 0.5 -> logit 0.5 * 2 = 1.
    sums, counts = torch.tensor([-2.0, -5.0]), torch.tensor([4, 5])
    loss, metrics = pair_loss(sums, counts, torch.tensor([-3.0]), torch.tensor([-4.0]), "dpo", {"beta": 0.5})
    assert_close(loss, torch.tensor(softplus(-1.0)))
    assert_close(metrics["reward_margin"], torch.tensor(1.0))  # 0.5 * 1 - 0.5 * (-1)
    assert_close(metrics["reward_accuracy"], torch.tensor(1.0))
    assert_close(metrics["chosen_logps"], torch.tensor(-2.0))


def test_pair_loss_simpo_averages_over_answer_tokens():
    # averages -4/2 = -2 and -6/3 = -2: equal rewards, so the loss is -log sigmoid(-gamma) = softplus(0.5).
    sums, counts = torch.tensor([-4.0, -6.0]), torch.tensor([2, 3])
    nan = torch.tensor([math.nan])
    loss, metrics = pair_loss(sums, counts, nan, nan, "simpo", {"beta": 2.0, "gamma": 0.5})
    assert_close(loss, torch.tensor(softplus(0.5)))
    assert_close(metrics["reward_margin"], torch.tensor(0.0))


def test_pair_loss_orpo_adds_the_chosen_nll():
    # averages -2/4 = -0.5 and -6/3 = -2; NLL on chosen = 2 / 4 = 0.5.
    sums, counts = torch.tensor([-2.0, -6.0]), torch.tensor([4, 3])
    log_odds = lambda p: p - math.log(1.0 - math.exp(p))  # noqa: E731
    ratio = log_odds(-0.5) - log_odds(-2.0)
    nan = torch.tensor([math.nan])
    loss, metrics = pair_loss(sums, counts, nan, nan, "orpo", {"lambda_": 0.1})
    assert_close(loss, torch.tensor(0.1 * softplus(-ratio) + 0.5))
    assert_close(metrics["nll_loss"], torch.tensor(0.5))


def test_collate_pairs_stacks_chosen_then_rejected():
    examples = [
        PreferenceExample("a", ([1, 2, 3], [-100, 2, 3]), ([1, 4], [-100, 4]), -1.0, -2.0),
        PreferenceExample("b", ([1, 5], [-100, 5]), ([1, 6, 7, 8], [-100, 6, 7, 8]), -3.0, -4.0),
    ]
    batch = collate_pairs(examples, pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [1, 5, 0, 0], [1, 4, 0, 0], [1, 6, 7, 8]]
    assert batch.attention_mask.sum(dim=1).tolist() == [3, 2, 2, 4]
    assert batch.labels[0].tolist() == [-100, 2, 3, -100]
    assert batch.reference_chosen_logps.tolist() == [-1.0, -3.0]
    assert batch.reference_rejected_logps.tolist() == [-2.0, -4.0]


def test_reference_cache_round_trip_and_missing_keys(tmp_path):
    cache = tmp_path / "reference_logps.jsonl"
    assert read_reference_cache(cache) == (None, {})
    identity = {"path": "/ckpt", "weights": [["model.safetensors", 10, 5]]}
    write_reference_cache(cache, identity, {"k1": (-1.5, -2.5), "k2": (-3.0, -4.0)})
    got_identity, scores = read_reference_cache(cache)
    assert got_identity == identity and scores == {"k1": (-1.5, -2.5), "k2": (-3.0, -4.0)}
    example = PreferenceExample("k2", ([1], [1]), ([1], [1]))
    attach_reference_logps([example], scores, cache)
    assert (example.reference_chosen_logp, example.reference_rejected_logp) == (-3.0, -4.0)
    with pytest.raises(InputError, match="no reference log-probabilities for 1 of 1 pairs"):
        attach_reference_logps([PreferenceExample("k3", ([1], [1]), ([1], [1]))], scores, cache)
    cache.write_text("not json\n")
    with pytest.raises(InputError, match="delete it to rescore"):
        read_reference_cache(cache)


def test_config_defaults_and_errors_name_the_key():
    config = load_config(DPOConfig, None, [])
    assert config.algorithm.loss_options() == {"beta": 0.1, "label_smoothing": 0.0}
    simpo = load_config(DPOConfig, None, ["algorithm.loss=simpo"]).algorithm
    assert simpo.loss_options() == {"beta": 2.0, "gamma": 0.5}
    assert load_config(DPOConfig, None, ["algorithm.loss=orpo"]).algorithm.loss_options() == {"lambda_": 0.1}
    assert not load_config(DPOConfig, None, ["algorithm.loss=orpo"]).algorithm.needs_reference
    bad = {
        "algorithm.loss=kto": "algorithm.loss: expected one of",
        "algorithm.beta=-1": "algorithm.beta: must be positive",
        "algorithm.label_smoothing=0.1 algorithm.loss=ipo": "algorithm.label_smoothing: only applies to loss=dpo",
        "algorithm.loss=orpo algorithm.beta=0.2": "algorithm.beta: orpo has no beta",
        "reference.batch_size=0": "reference.batch_size: must be >= 1",
        "data.format=sharegpt": "data.format: DPO reads prompt/chosen/rejected pairs",
        "model.lora.dropout=1.5": "model.lora.dropout: must be in",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_config(DPOConfig, None, overrides.split())
