"""Open-ended QA and multi-turn dialogue: greedy generation scored by character BLEU and ROUGE.

* `qa`: records `{"question", "answer"}`; the question is one user turn, the answer the reference.
* `dialogue`: ShareGPT records `{"conversations": [{"from": "human"|"gpt", "value"}]}`; every turn
  before the last `gpt` turn is context, the last `gpt` turn is the reference.

Scores are corpus BLEU-1..4 and mean ROUGE-1/2/L F1 on character tokens (see `metrics.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chimed_ray.evaluation.metrics import bleu_scores, rouge_scores
from chimed_ray.evaluation.records import EvalRequest, EvalResponse, Record, TaskResult, lookup, read_records
from chimed_ray.evaluation.records import require_field
from chimed_ray.models.tokenizer import HUMAN_TAG
from chimed_ray.utils.files import InputError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class GenerationItem:
    """Chat context to continue and the reference continuation."""

    messages: list[dict[str, str]]
    reference: str


def parse_qa(record: Record) -> GenerationItem:
    question = require_field(record, "question")
    return GenerationItem([{"role": "user", "content": question}], require_field(record, "answer"))


def parse_dialogue(record: Record) -> GenerationItem:
    """Context turns and the last assistant turn of a ShareGPT record.

    Raises:
        InputError: unknown speaker, or no assistant turn after a user turn, naming file:line.
    """
    turns = require_field(record, "conversations", list)
    messages = []
    for index, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in ROLES or not isinstance(turn.get("value"), str):
            raise InputError(
                f"{record.source}: conversations[{index}] should be {{'from': human|gpt, 'value': str}}, got {turn!r}"
            )
        messages.append({"role": ROLES[speaker], "content": turn["value"]})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 1 or not any(m["role"] == "user" for m in messages[:last]):
        raise InputError(f"{record.source}: a dialogue needs a human turn followed by a gpt turn (the reference)")
    return GenerationItem(messages[:last], messages[last]["content"])


PARSERS = {"qa": parse_qa, "dialogue": parse_dialogue}


def clean_generation(text: str) -> str:
    """Cut a completion where the model starts the next `[human]:` turn, and trim whitespace."""
    return text.split(HUMAN_TAG, 1)[0].strip()


@dataclass
class GenerationTask:
    """The `qa` or `dialogue` task."""

    name: str
    items: list[GenerationItem]
    max_new_tokens: int
    needs_logprobs: bool = False

    def requests(self) -> list[EvalRequest]:
        return [
            EvalRequest(f"{self.name}/{i}", item.messages, max_new_tokens=self.max_new_tokens)
            for i, item in enumerate(self.items)
        ]

    def score(self, responses: dict[str, EvalResponse]) -> TaskResult:
        """BLEU-1..4 and ROUGE-1/2/L (0-100) of the generations against the references."""
        hypotheses = [clean_generation(lookup(responses, f"{self.name}/{i}").text) for i in range(len(self.items))]
        references = [item.reference for item in self.items]
        metrics = {**bleu_scores(hypotheses, references), **rouge_scores(hypotheses, references)}
        metrics["n"] = len(self.items)
        rows = [
            {"prompt": item.messages[-1]["content"], "reference": item.reference, "generation": hypothesis}
            for item, hypothesis in zip(self.items, hypotheses)
        ]
        return TaskResult(metrics, {}, rows)


def load_task(name: str, paths: list[Path], max_new_tokens: int, max_items: int) -> GenerationTask:
    """Read `qa` or `dialogue` records into a generation task."""
    parse = PARSERS[name]
    return GenerationTask(name, [parse(record) for record in read_records(paths, max_items)], max_new_tokens)
