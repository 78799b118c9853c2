"""The reward stage on the shared Ray Train loop: held-out pair accuracy beats chance, every
parameter trains, and the saved model scores at the last non-pad token."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_reward_model_beats_chance_on_held_out_pairs(trained_reward_model: Path, tiny_checkpoint: Path, rlhf):
    metrics = rlhf.metrics_by_step(trained_reward_model.parent)
    final = metrics[max(metrics)]
    # Bundled eval pairs are held out from training; 0.5 is a coin flip.
    assert final["eval/accuracy"] > 0.6, final
    assert final["eval/loss"] < 0.693, final  # below log(2), the loss of a reward model that cannot tell
    first_loss = metrics[min(metrics)]["train/loss"]
    assert final["train/loss"] < first_loss, (first_loss, final["train/loss"])
    # The backbone came from the policy checkpoint; the score head is new, so compare the backbone.
    rlhf.assert_every_tensor_changed(tiny_checkpoint, trained_reward_model)


def test_saved_reward_model_reloads_and_ranks_held_out_pairs(trained_reward_model: Path):
    import torch

    from chimed_ray.config import DataConfig
    from chimed_ray.data import load_split, to_preference
    from chimed_ray.data.splits import keys_of
    from chimed_ray.models import load_tokenizer
    from chimed_ray.models.heads import build_scalar_model
    from chimed_ray.trainers.reward import collate_pairs, tokenize_pair

    tokenizer = load_tokenizer(str(trained_reward_model))
    model = build_scalar_model(str(trained_reward_model), None, tokenizer).eval()
    _, held_out = load_split(DataConfig(), "preference")
    pairs = [to_preference(record, keys_of(DataConfig())) for record in held_out]
    examples = [(tokenize_pair(p.prompt, p.chosen, tokenizer, 256), tokenize_pair(p.prompt, p.rejected, tokenizer, 256))
                for p in pairs]
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    from chimed_ray.models.heads import sequence_scores

    with torch.no_grad():
        scores = sequence_scores(model, batch.input_ids, batch.attention_mask)
    chosen, rejected = scores[: batch.num_pairs], scores[batch.num_pairs :]
    assert float((chosen > rejected).float().mean()) > 0.6
