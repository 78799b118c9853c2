"""Stage 3, the reward model: a scalar head on the SFT model trained on preference pairs with the
pairwise (Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected - margin); held-out pair accuracy
is the eval metric. Runs on the shared Ray Train loop.
`chimed-ray reward --config configs/reward/tiny.yaml`"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from chimed_ray.config.rlhf import RewardConfig
from chimed_ray.data import load_split, to_preference, tokenize_dialogue
from chimed_ray.data.splits import keys_of
from chimed_ray.trainers.task import StageTask

if TYPE_CHECKING:
    import torch

PairExample = tuple[list[int], list[int]]  # (chosen ids, rejected ids), prompt included in both


@dataclass
class PairBatch:
    """Chosen and rejected sequences stacked into one right-padded batch: rows [0, B) are chosen,
    rows [B, 2B) the matching rejected answers, so one forward pass scores both."""

    input_ids: "torch.Tensor"  # [2B, T]
    attention_mask: "torch.Tensor"  # [2B, T]

    def to(self, device: "torch.device") -> "PairBatch":
        return PairBatch(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def tokenize_pair(prompt: list[dict], answer: str, tokenizer, max_length: int) -> list[int]:
    """Token ids of the prompt dialogue followed by `answer` (ChiMed format, EOS-terminated)."""
    messages = prompt + [{"role": "assistant", "content": answer}]
    ids, _ = tokenize_dialogue(messages, tokenizer, max_length, train_on_prompt=True)
    return ids


def collate_pairs(examples: Sequence[PairExample], pad_token_id: int) -> PairBatch:
    """Right-pad chosen then rejected sequences into one `PairBatch`."""
    from chimed_ray.data.padding import right_pad

    rows = [chosen for chosen, _ in examples] + [rejected for _, rejected in examples]
    return PairBatch(*right_pad(rows, pad_token_id))


class RewardTask(StageTask):
    config_cls = RewardConfig
    plot_keys = ("train/loss", "eval/loss", "eval/accuracy")
    margin: float = 0.0  # set from the config in build_model, read by compute_loss

    def build_examples(self, config: RewardConfig, tokenizer) -> tuple[list, list]:
        train, evaluation = load_split(config.data, "preference", config.optim.seed)
        keys = keys_of(config.data)

        def pairs(records) -> list[PairExample]:
            out = []
            for record in records:
                pair = to_preference(record, keys)
                chosen = tokenize_pair(pair.prompt, pair.chosen, tokenizer, config.data.max_length)
                rejected = tokenize_pair(pair.prompt, pair.rejected, tokenizer, config.data.max_length)
                if chosen != rejected:  # truncation can erase the difference; such a pair teaches nothing
                    out.append((chosen, rejected))
            return out

        return pairs(train), pairs(evaluation)

    def build_model(self, config: RewardConfig, tokenizer) -> "torch.nn.Module":
        from chimed_ray.models.heads import build_scalar_model, score_head_name

        model = build_scalar_model(
            config.model.path, config.model.tiny, tokenizer, precision=config.scale.resolved_precision(),
            trust_remote_code=config.model.trust_remote_code,
            attn_implementation=config.model.attn_implementation, seed=config.optim.seed,
        )
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.margin = config.margin
        # With LoRA the fresh head must still train in full.
        return self.maybe_apply_lora(model, config, modules_to_save=[score_head_name(model)])

    def collate(self, examples: Sequence[PairExample], tokenizer) -> PairBatch:
        return collate_pairs(examples, tokenizer.pad_token_id)

    def compute_loss(self, model, batch: PairBatch):
        from chimed_ray.algorithms import pairwise_reward_loss
        from chimed_ray.models.heads import sequence_scores

        scores = sequence_scores(model, batch.input_ids, batch.attention_mask)  # [2B]
        chosen, rejected = scores[: batch.num_pairs], scores[batch.num_pairs :]
        loss, metrics = pairwise_reward_loss(chosen, rejected, margin=self.margin or None)
        return loss, {
            "loss": float(loss.detach()),
            "accuracy": float(metrics["reward_accuracy"]),
            "margin": float(metrics["reward_margin"]),
            "chosen_reward": float(metrics["chosen_rewards"]),
            "rejected_reward": float(metrics["rejected_rewards"]),
        }, float(batch.num_pairs)


def run_reward(config: RewardConfig) -> Path:
    """Train the reward model with Ray Train; returns `<output_dir>/final` (an HF directory)."""
    from chimed_ray.trainers.launch import run_ray_train

    return run_ray_train("reward", config)


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config

    config, _ = parse_stage_config("reward", RewardConfig, argv)
    run_reward(config)
    return 0
