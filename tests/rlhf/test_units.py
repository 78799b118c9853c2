"""Fast checks without Ray: config validation, batch layout and masks, heads, prompts, selection."""

from __future__ import annotations

import pytest
import torch


def test_ppo_config_rejects_uneven_batches_and_bad_reward_sources(rlhf):
    from chimed_ray.config import ConfigError, load_config
    from chimed_ray.config.rlhf import PPOConfig

    tiny = rlhf.config_path("ppo/tiny.yaml")
    assert load_config(PPOConfig, tiny).algorithm.needs_critic
    with pytest.raises(ConfigError, match="algorithm.mini_batch_size: 6 must divide"):
        load_config(PPOConfig, tiny, ["algorithm.mini_batch_size=6"])
    with pytest.raises(ConfigError, match="reward.path: set exactly one"):
        load_config(PPOConfig, tiny, ["reward.function=my.module:fn"])
    with pytest.raises(ConfigError, match="samples_per_prompt: grpo compares"):
        load_config(PPOConfig, tiny, ["algorithm.advantage_estimator=grpo", "rollout.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="advantage_estimator: expected one of"):
        load_config(PPOConfig, tiny, ["algorithm.advantage_estimator=ppo2"])
    with pytest.raises(ConfigError, match="separate_engine"):
        load_config(PPOConfig, tiny, ["rollout.engine=vllm"])
    with pytest.raises(ConfigError, match="colocated roles share one GPU"):
        load_config(PPOConfig, rlhf.config_path("ppo/tiny_colocate.yaml"),
                    ["scale.use_gpu=true", "scale.policy.gpus_per_worker=0.5"])
    grpo = load_config(PPOConfig, tiny, ["algorithm.advantage_estimator=grpo"])
    assert not grpo.algorithm.needs_critic


def test_every_shipped_config_loads(rlhf):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig, RejectionSamplingConfig, RewardConfig

    for cls, name in [(RewardConfig, "reward/tiny.yaml"), (PPOConfig, "ppo/tiny.yaml"), (PPOConfig, "ppo/tiny_colocate.yaml"),
                      (PPOConfig, "ppo/gpu_13b.yaml"), (RejectionSamplingConfig, "rejection_sampling/tiny.yaml")]:
        load_config(cls, rlhf.config_path(name))
    big = load_config(PPOConfig, rlhf.config_path("ppo/gpu_13b.yaml"))
    assert big.gradient_accumulation("policy") == 4 and big.scale.zero_stage == 3


def test_rollout_batch_layout_and_masks():
    from chimed_ray.distributed.batch import build_rollout_batch

    pad, eos = 0, 2
    batch = build_rollout_batch([[5, 6, 7], [8]], [[9, 2], [10, 11, 12]], [0, 1], pad, [eos])
    assert batch.sequences.tolist() == [[5, 6, 7, 9, 2, 0], [0, 0, 8, 10, 11, 12]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]  # EOS kept, padding dropped
    assert batch.prompt_width == 3 and batch.responses.tolist() == [[9, 2, 0], [10, 11, 12]]
    assert batch.shard(1, 2).sequences.tolist() == [[0, 0, 8, 10, 11, 12]]
    with pytest.raises(ValueError, match="does not split evenly"):
        batch.shard(0, 3)
    stopped_at_once = build_rollout_batch([[5]], [[]], [0], pad, [eos])  # no answer token at all
    assert stopped_at_once.response_mask.tolist() == [[0]] and stopped_at_once.attention_mask.tolist() == [[1, 0]]


def test_pad_equal_to_eos_keeps_the_eos_token():
    from chimed_ray.distributed.batch import build_rollout_batch

    batch = build_rollout_batch([[5]], [[9, 2]], [0], 2, [2])  # pad id == EOS id
    assert batch.response_mask.tolist() == [[1, 1]]


def test_reward_is_read_at_the_last_real_token(tokenizer):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models.heads import build_scalar_model, sequence_scores, token_values

    model = build_scalar_model("", TinyModelConfig(), tokenizer, seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, tokenizer.pad_token_id, tokenizer.pad_token_id]])
    with torch.no_grad():
        alone = sequence_scores(model, ids, torch.ones_like(ids))
        right_padded = sequence_scores(model, padded, torch.tensor([[1, 1, 1, 1, 0, 0]]))
        values = token_values(model, ids, torch.ones_like(ids))
    assert torch.allclose(alone, right_padded, atol=1e-5)
    assert torch.allclose(alone, values[:, -1])


def test_logprobs_match_generation_with_left_padding(tokenizer):
    """Scoring a left-padded batch gives the log-probs of the unpadded sequences (positions skip
    the padding as in HF generate), so the PPO ratio starts at exactly 1."""
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.distributed.batch import build_rollout_batch
    from chimed_ray.distributed.forward import response_logprobs
    from chimed_ray.models import build_causal_lm
    from chimed_ray.rollout.base import SamplingParams
    from chimed_ray.rollout.hf_engine import HFEngine

    model = build_causal_lm("", TinyModelConfig(), tokenizer, seed=0).eval()
    prompts = [tokenizer("[human]:头痛三天了怎么办\n[bot]:")["input_ids"], tokenizer("[human]:发烧\n[bot]:")["input_ids"]]
    engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    answers = engine.generate(prompts, SamplingParams(max_new_tokens=6, seed=0))
    batch = build_rollout_batch(prompts, answers, [0, 1], tokenizer.pad_token_id, [tokenizer.eos_token_id])
    with torch.no_grad():
        batched, _ = response_logprobs(model, batch)
        for row, (prompt, answer) in enumerate(zip(prompts, answers)):
            ids = torch.tensor([prompt + answer])
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
            alone = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(answer)[:, None]).squeeze(-1)
            assert torch.allclose(batched[row, : len(answer)], alone, atol=1e-4)


def test_hf_engine_load_weights_replaces_every_tensor(tokenizer):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm
    from chimed_ray.rollout.hf_engine import HFEngine

    source = build_causal_lm("", TinyModelConfig(), tokenizer, seed=1)
    engine = HFEngine(build_causal_lm("", TinyModelConfig(), tokenizer, seed=2), [2], 0)
    engine.load_weights(source.state_dict())
    for name, tensor in engine.model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    with pytest.raises(KeyError, match="parameters missing"):
        engine.load_weights({})


def test_prompts_are_first_user_turns_in_the_chat_template(tokenizer):
    from chimed_ray.config import DataConfig
    from chimed_ray.rollout.prompts import load_prompts

    prompts = load_prompts(DataConfig(), tokenizer, max_prompt_length=256, limit=5)
    assert len(prompts) == 5
    for prompt in prompts:
        assert prompt.messages[-1]["role"] == "user"
        assert prompt.text == tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        assert prompt.text.endswith("[bot]:")


def test_prompt_order_resumes_where_it_stopped():
    from chimed_ray.trainers.ppo_state import PromptOrder

    order = PromptOrder(5, seed=3)
    straight = order.take(0, 12)
    assert straight[:7] + PromptOrder(5, seed=3).take(7, 5) == straight
    assert sorted(straight[:5]) == list(range(5)) and sorted(straight[5:10]) == list(range(5))


def test_selection_keeps_the_best_answer_per_prompt():
    from chimed_ray.trainers.rejection_sampling import select_answers

    rows = [{"prompt_index": p, "score": s, "row_id": i} for i, (p, s) in enumerate([(0, 0.1), (0, 0.9), (1, 0.5), (1, 0.5)])]
    assert [r["row_id"] for r in select_answers(rows, "top1", 0.0)] == [1, 2]
    assert [r["row_id"] for r in select_answers(rows, "threshold", 0.5)] == [1, 2, 3]


def test_rule_reward_pays_for_odd_tokens_and_not_for_stopping():
    from chimed_ray.rollout.rule_rewards import token_parity

    assert token_parity(["p"] * 3, ["a"] * 3, [[1, 3, 5], [1, 2], []]) == [1.0, 0.5, 0.0]


def test_prompt_files_may_hold_bare_prompts_preference_pairs_or_dialogues():
    from chimed_ray.data.formats import Keys
    from chimed_ray.data.readers import Record
    from chimed_ray.rollout.prompts import first_user_turn

    user = [{"role": "user", "content": "头痛"}]
    assert first_user_turn(Record({"prompt": "头痛"}, "f:1"), "auto", Keys()) == user
    assert first_user_turn(Record({"question": "头痛"}, "f:2"), "auto", Keys(input_key="question")) == user
    assert first_user_turn(Record({"prompt": "头痛", "chosen": "a", "rejected": "b"}, "f:3"), "auto", Keys()) == user
    turns = [{"from": "human", "value": "头痛"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"},
             {"from": "gpt", "value": "b"}]
    assert first_user_turn(Record({"conversations": turns}, "f:4"), "auto", Keys()) == user
