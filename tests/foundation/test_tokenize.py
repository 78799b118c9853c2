"""Answer-only loss masks and packing, checked against hand-worked expectations."""

from __future__ import annotations

from chimed_ray.data import IGNORE_INDEX, collate_lm, dialogue_segments, pack_documents, tokenize_dialogue

TWO_TURNS = [
    {"role": "user", "content": "我咳嗽三天了"},
    {"role": "assistant", "content": "有发热吗？"},
    {"role": "user", "content": "有，38度"},
    {"role": "assistant", "content": "建议查血常规。"},
]


def test_segments_of_a_two_turn_dialogue():
    # Worked by hand: prompts end with "[bot]:", answers end with EOS, and the newline after an
    # answer opens the next prompt.
    assert dialogue_segments(TWO_TURNS, "</s>") == [
        ("[human]:我咳嗽三天了\n[bot]:", False),
        ("有发热吗？</s>", True),
        ("\n[human]:有，38度\n[bot]:", False),
        ("建议查血常规。</s>", True),
    ]


def test_segments_match_the_chat_template(tokenizer):
    rendered = tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    joined = "".join(text for text, _ in dialogue_segments(TWO_TURNS, tokenizer.eos_token))
    assert rendered == joined + "\n"
    prompt = tokenizer.apply_chat_template(TWO_TURNS[:3], tokenize=False, add_generation_prompt=True)
    assert prompt == "".join(text for text, _ in dialogue_segments(TWO_TURNS, tokenizer.eos_token)[:3])


def test_answer_only_mask_on_two_turns(tokenizer):
    input_ids, labels = tokenize_dialogue(TWO_TURNS, tokenizer, max_length=512)
    pieces = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in dialogue_segments(TWO_TURNS, tokenizer.eos_token)]
    assert input_ids == pieces[0] + pieces[1] + pieces[2] + pieces[3]
    expected = [IGNORE_INDEX] * len(pieces[0]) + pieces[1] + [IGNORE_INDEX] * len(pieces[2]) + pieces[3]
    assert labels == expected
    # Both answers are trained, each closing with exactly one EOS.
    targets = [t for t in labels if t != IGNORE_INDEX]
    assert targets.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(targets) == "有发热吗？</s>建议查血常规。</s>"
    # train_on_prompt trains every token.
    _, all_labels = tokenize_dialogue(TWO_TURNS, tokenizer, 512, train_on_prompt=True)
    assert all_labels == input_ids


def test_truncation_drops_examples_without_answers(tokenizer):
    first_prompt = tokenizer(dialogue_segments(TWO_TURNS, tokenizer.eos_token)[0][0], add_special_tokens=False)["input_ids"]
    assert tokenize_dialogue(TWO_TURNS, tokenizer, max_length=len(first_prompt)) is None
    ids, labels = tokenize_dialogue(TWO_TURNS, tokenizer, max_length=len(first_prompt) + 1)
    assert len(ids) == len(first_prompt) + 1 and labels[-1] != IGNORE_INDEX


class _CharTokenizer:
    """One id per character, so packing arithmetic can be done by hand."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - ord("a") + 1 for c in text]}


def test_packing_by_hand():
    # "abc" EOS "de" EOS "fghi" EOS -> 1 2 3 0 4 5 0 6 7 8 9 0 (12 ids) -> blocks of 5: two blocks,
    # the last 2 ids are dropped.
    blocks = pack_documents(["abc", "de", "fghi"], _CharTokenizer(), block_size=5)
    assert blocks == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]
    assert pack_documents(["ab"], _CharTokenizer(), block_size=5) == []


def test_collate_pads_right_and_masks_padding():
    batch = collate_lm([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.num_target_tokens() == 2


def test_packed_sft_bins_give_the_padded_batch_loss(tokenizer):
    """Packed conversations (position ids restarting, no mask) must see only themselves: the summed
    answer loss of the packed bins equals that of the same conversations right-padded."""
    import torch

    from chimed_ray.config import TinyModelConfig
    from chimed_ray.data import pack_examples
    from chimed_ray.models import build_causal_lm

    dialogues = [TWO_TURNS, TWO_TURNS[:2], [{"role": "user", "content": "头痛怎么办"}, {"role": "assistant", "content": "多休息。"}]]
    examples = [tokenize_dialogue(d, tokenizer, 64) for d in dialogues]
    bins = pack_examples(examples, capacity=max(len(ids) for ids, _ in examples) + 12)
    assert len(bins) < len(examples)  # two conversations share a bin
    assert sum(len(ids) for ids, _, _ in bins) == sum(len(ids) for ids, _ in examples)
    for ids, labels, positions in bins:  # every conversation starts at position 0 with no loss
        for start in (i for i, p in enumerate(positions) if p == 0):
            assert labels[start] == IGNORE_INDEX

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=0).double().eval()  # float64: no rounding noise

    def summed_loss(batch):
        logits = model(**{k: v for k, v in batch.model_inputs().items() if k != "labels"}).logits[:, :-1]
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE_INDEX
        return torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"), int(keep.sum())

    padded, packed = collate_lm(examples, tokenizer.pad_token_id), collate_lm(bins, tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] == len(bins) and packed.position_ids is not None
    (padded_loss, padded_n), (packed_loss, packed_n) = summed_loss(padded), summed_loss(packed)
    assert packed_n == padded_n
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-9, atol=1e-9)
