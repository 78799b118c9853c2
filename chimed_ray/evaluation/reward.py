"""The `reward` task: each model answers held-out prompts (greedy), and one reward model scores every
answer, so the report compares base, SFT and RLHF on the yardstick RLHF optimises.

Prompts come from any file the rollout prompt reader accepts (preference pairs, ShareGPT dialogues,
`{"prompt": ...}` rows); the bundled set is `preference/eval.jsonl`, whose prompts neither SFT,
reward training nor rejection sampling has seen. Answers are scored exactly as the reward model was
trained: the prompt and answer in the ChiMed chat format, EOS-terminated, read at the last token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chimed_ray.evaluation.metrics import mean
from chimed_ray.evaluation.records import EvalRequest, EvalResponse, TaskResult, lookup, read_records
from chimed_ray.utils.files import InputError

SCORE_BATCH = 16


@dataclass
class RewardTask:
    """Generate an answer per prompt; score the answers with the reward model at `reward_path`."""

    prompts: list[list[dict[str, str]]]
    reward_path: str
    max_new_tokens: int
    max_length: int = 1024
    name: str = "reward"
    needs_logprobs: bool = False

    def requests(self) -> list[EvalRequest]:
        return [EvalRequest(f"{self.name}/{i}", messages, max_new_tokens=self.max_new_tokens)
                for i, messages in enumerate(self.prompts)]

    def score(self, responses: dict[str, EvalResponse]) -> TaskResult:
        """Mean reward over the prompts (in the reward model's own units, not a percentage)."""
        answers = [lookup(responses, f"{self.name}/{i}").text for i in range(len(self.prompts))]
        scores = score_answers(self.reward_path, self.prompts, answers, self.max_length)
        rows = [{"prompt": messages[-1]["content"], "answer": answer, "reward": score}
                for messages, answer, score in zip(self.prompts, answers, scores)]
        return TaskResult({"reward": mean(scores), "n": len(scores)}, {}, rows)


def score_answers(reward_path: str, prompts: list[list[dict[str, str]]], answers: list[str],
                  max_length: int) -> list[float]:
    """The reward model's score of each (prompt, answer), in batches on CPU or the first GPU."""
    import torch

    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import load_tokenizer
    from chimed_ray.models.heads import build_scalar_model, sequence_scores
    from chimed_ray.data.padding import right_pad
    from chimed_ray.trainers.reward import tokenize_pair

    tokenizer = load_tokenizer(reward_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_scalar_model(reward_path, TinyModelConfig(), tokenizer).to(device).eval()
    sequences = [tokenize_pair(p, a, tokenizer, max_length) for p, a in zip(prompts, answers)]
    scores: list[float] = []
    for start in range(0, len(sequences), SCORE_BATCH):
        input_ids, attention_mask = right_pad(sequences[start:start + SCORE_BATCH], tokenizer.pad_token_id)
        with torch.no_grad():
            scores += sequence_scores(model, input_ids.to(device), attention_mask.to(device)).float().cpu().tolist()
    return scores


def load_task(paths: list[Path], reward_path: str, max_new_tokens: int, max_items: int) -> RewardTask:
    """Read the prompts of `paths`; `reward_path` must be an HF reward-model checkpoint."""
    from chimed_ray.data.formats import Keys
    from chimed_ray.data.readers import Record as DataRecord
    from chimed_ray.models import is_hf_checkpoint
    from chimed_ray.rollout.prompts import first_user_turn

    if not is_hf_checkpoint(reward_path):
        raise InputError(f"reward_model: {reward_path!r} is not an HF reward-model directory (config.json and *.safetensors)")
    prompts = []
    for record in read_records(paths, max_items):
        try:
            prompts.append(first_user_turn(DataRecord(record.data, record.source), "auto", Keys()))
        except (InputError, KeyError, StopIteration, TypeError, ValueError) as exc:
            raise InputError(f"{record.source}: not a prompt, preference pair or dialogue ({exc})") from None
    return RewardTask(prompts, reward_path, max_new_tokens)
