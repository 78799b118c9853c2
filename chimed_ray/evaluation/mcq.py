"""Multiple-choice QA: C-Eval / CMMLU (CSV or JSONL) and MedQA (JSONL), zero- or few-shot.

Accepted records, detected per record:

* C-Eval: `{"id", "subject", "question", "A".."D", "answer", "explanation"}` (JSONL, or the
  official `<subject>_val.csv` with columns `id,question,A,B,C,D,answer,explanation`);
* CMMLU: CSV with columns `Question,A,B,C,D,Answer` (the subject is the file name);
* MedQA: `{"question", "options": {"A".."E"}, "answer", "meta_info"}`, where `answer` is the
  letter, or the option text with the letter in `answer_idx` (the official release).

The prompt follows C-Eval's Chinese template, "以下是中国关于{科目}考试的单项选择题，请选出其中的正确
答案。", with the subject's Chinese name (C-Eval's `subject_mapping.json`, CMMLU's subject names;
an id we do not know is shown as given), one chat turn per demonstration. The model's answer is the
option letter whose token has the highest next-token log-probability after `[bot]:`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chimed_ray.evaluation.metrics import accuracy, choose_option
from chimed_ray.evaluation.records import (
    EvalRequest,
    EvalResponse,
    Record,
    TaskResult,
    lookup,
    read_records,
    require_field,
)
from chimed_ray.utils.files import InputError

LETTERS = "ABCDEFGH"
SPLIT_SUFFIXES = ("_val", "_test", "_dev", "_train")
# Chinese names of the medical subjects of C-Eval (subject_mapping.json) and CMMLU, and of our
# bundled pharmacology set; the prompt names the subject in Chinese, as both benchmarks do.
SUBJECT_NAMES = {
    "clinical_medicine": "临床医学", "basic_medicine": "基础医学", "physician": "医师资格",
    "veterinary_medicine": "兽医学", "pharmacology": "药理学",
    "anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medicine": "大学医学",
    "college_medical_statistics": "大学医学统计", "genetics": "遗传学", "nutrition": "营养学",
    "professional_medicine": "专业医学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学",
    "high_school_biology": "高中生物", "college_biology": "大学生物学",
}


@dataclass
class MCQItem:
    """One question with its lettered options (in display order) and the correct letter."""

    id: str
    subject: str
    question: str
    options: dict[str, str]
    answer: str


def _subject_from_path(source: str) -> str:
    stem = Path(source.rsplit(":", 1)[0].split("[", 1)[0]).stem
    for suffix in SPLIT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _medqa_fields(record: Record) -> tuple[str, dict[str, str], str, str]:
    data = record.data
    options = {str(k).strip().upper(): str(v) for k, v in data["options"].items()}
    answer = str(data.get("answer_idx") or require_field(record, "answer")).strip()
    by_text = {text.strip(): letter for letter, text in options.items()}
    answer = answer.upper() if answer.upper() in options else by_text.get(answer, answer)
    subject = str(data.get("subject") or data.get("meta_info") or "medqa")
    return str(require_field(record, "question")), options, answer, subject


def _column_fields(record: Record) -> tuple[str, dict[str, str], str, str]:
    # C-Eval spells its columns in lower case, CMMLU capitalises them; option letters are upper case.
    lowered = {str(k).lower(): v for k, v in record.data.items()}
    if "question" not in lowered or "answer" not in lowered:
        raise InputError(f"{record.source}: an MCQ record needs 'question' and 'answer' (has {sorted(record.data)})")
    options = {letter: str(record.data[letter]) for letter in LETTERS if record.data.get(letter) not in (None, "")}
    subject = str(lowered.get("subject") or _subject_from_path(record.source))
    return str(lowered["question"]), options, str(lowered["answer"]).strip().upper(), subject


def parse_mcq(record: Record, index: int) -> MCQItem:
    """Normalise a C-Eval, CMMLU or MedQA record (see the module docstring) into an `MCQItem`.

    Raises:
        InputError: a field is missing or the answer is not one of the options, naming file:line.
    """
    is_medqa = isinstance(record.data.get("options"), dict)
    question, options, answer, subject = (_medqa_fields if is_medqa else _column_fields)(record)
    if len(options) < 2:
        raise InputError(f"{record.source}: expected at least two options A, B, ..., got {sorted(options)}")
    if answer not in options:
        raise InputError(f"{record.source}: answer {answer!r} is not one of the options {list(options)}")
    item_id = str(record.data.get("id", record.data.get("ID", index)))
    return MCQItem(item_id, subject, question.strip(), options, answer)


def load_items(paths: list[Path], max_items: int = 0) -> list[MCQItem]:
    """Read and normalise the records of `paths` (an evenly spaced `max_items` of them when > 0)."""
    return [parse_mcq(record, index) for index, record in enumerate(read_records(paths, max_items))]


def question_block(item: MCQItem) -> str:
    """`question\\nA. ...\\nB. ...\\n答案：`, the body C-Eval uses for questions and demonstrations."""
    lines = [item.question] + [f"{letter}. {text}" for letter, text in item.options.items()]
    return "\n".join(lines) + "\n答案："


def subject_name(subject: str) -> str:
    """The Chinese name of a C-Eval/CMMLU subject id (`clinical_medicine` -> `临床医学`); other
    names, Chinese ones included, are returned as given."""
    return SUBJECT_NAMES.get(subject.strip().lower(), subject)


def instruction(subject: str) -> str:
    return f"以下是中国关于{subject_name(subject)}考试的单项选择题，请选出其中的正确答案。"


def pick_examples(item: MCQItem, pool: list[MCQItem], k: int) -> list[MCQItem]:
    """Up to `k` demonstrations for `item`: same subject first, never the question itself."""
    candidates = [ex for ex in pool if ex.question != item.question]
    same = [ex for ex in candidates if ex.subject == item.subject]
    other = [ex for ex in candidates if ex.subject != item.subject]
    return (same + other)[:k]


def build_messages(item: MCQItem, examples: list[MCQItem]) -> list[dict[str, str]]:
    """Chat turns: the instruction heads the first user turn; each demonstration is answered."""
    messages: list[dict[str, str]] = []
    for example in examples:
        messages.append({"role": "user", "content": question_block(example)})
        messages.append({"role": "assistant", "content": example.answer})
    messages.append({"role": "user", "content": question_block(item)})
    messages[0] = {"role": "user", "content": f"{instruction(item.subject)}\n\n{messages[0]['content']}"}
    return messages


@dataclass
class MCQTask:
    """A multiple-choice benchmark (`mcq` or `medqa`) ready to be asked and scored."""

    name: str
    items: list[MCQItem]
    examples: list[MCQItem]
    few_shot: int = 0
    needs_logprobs: bool = True

    def requests(self) -> list[EvalRequest]:
        return [
            EvalRequest(
                uid=f"{self.name}/{index}",
                messages=build_messages(item, pick_examples(item, self.examples, self.few_shot)),
                options=list(item.options),
            )
            for index, item in enumerate(self.items)
        ]

    def score(self, responses: dict[str, EvalResponse]) -> TaskResult:
        """Accuracy (in %) overall and per subject."""
        predictions = []
        for index, item in enumerate(self.items):
            logprobs = lookup(responses, f"{self.name}/{index}").option_logprobs
            chosen = list(item.options)[choose_option(logprobs)]
            predictions.append({
                "id": item.id, "subject": item.subject, "answer": item.answer, "prediction": chosen,
                "correct": chosen == item.answer, "option_logprobs": dict(zip(item.options, logprobs)),
            })
        by_subject: dict[str, dict[str, float]] = {}
        for subject in sorted({p["subject"] for p in predictions}):
            rows = [p["correct"] for p in predictions if p["subject"] == subject]
            by_subject[subject] = {"name": subject_name(subject), "accuracy": 100.0 * accuracy(rows), "n": len(rows)}
        metrics = {"accuracy": 100.0 * accuracy(p["correct"] for p in predictions), "n": len(predictions)}
        return TaskResult(metrics, {"by_subject": by_subject}, predictions)


def load_task(name: str, paths: list[Path], example_paths: list[Path], few_shot: int, max_items: int) -> MCQTask:
    """Build the `mcq`/`medqa` task; demonstrations are read only when `few_shot` > 0."""
    examples = load_items(example_paths) if few_shot > 0 else []
    return MCQTask(name, load_items(paths, max_items), examples, few_shot)
