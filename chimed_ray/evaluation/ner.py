"""Medical NER by prompting (CCKS-2019 / ChiMST style), scored by entity-level P/R/F1.

Input records are CCKS-2019 JSONL: `{"originalText": str, "entities": [{"start_pos", "end_pos",
"label_type"}]}` with `end_pos` exclusive; an entity may instead carry its text directly
(`{"text"|"entity", "label_type"|"type"}`).

Output format asked of the model, one entity per line, `类型：实体` (full- or half-width colon):

    疾病和诊断：胃癌
    解剖部位：胃
    药物：奥美拉唑

and `无` when there is no entity. Parsing is forgiving: list markers (`1.`, `-`, `•`), quotes and
brackets are stripped; several entities on one line may be separated by `、，,；;`; an
abbreviated type that names exactly one known type (`疾病` -> `疾病和诊断`) is mapped to it; a line
written the other way round (`胃癌：疾病和诊断`) is flipped. Scoring compares, per document, the
set of unique `(text, type)` pairs with the gold set by exact match; micro and per-type counts are
summed over documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from chimed_ray.evaluation.metrics import entity_prf
from chimed_ray.evaluation.records import EvalRequest, EvalResponse, Record, TaskResult, lookup, read_records
from chimed_ray.evaluation.records import require_field
from chimed_ray.utils.files import InputError

# CCKS-2019 task 1's six categories, in its order: the prompt always offers all six.
CCKS_TYPES = ("疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位")
NO_ENTITY = {"", "无", "暂无", "没有", "none", "None"}
_LIST_MARKER = re.compile(r"^\s*(?:[-*•·]+|\d+\s*[.、)）]|[（(]\d+[)）])\s*")
_SEPARATORS = re.compile(r"[、，,；;]")
_STRIP = " \t\"'“”‘’「」『』《》【】[]()（）。."


@dataclass
class NERDoc:
    """A document and its gold entities as unique `(text, type)` pairs."""

    text: str
    entities: set[tuple[str, str]]


def _entity_pair(record: Record, text: str, entity: dict, index: int) -> tuple[str, str]:
    where = f"{record.source}: entities[{index}]"
    label = entity.get("label_type", entity.get("type"))
    if not isinstance(label, str) or not label:
        raise InputError(f"{where}: needs a 'label_type' string, got {entity!r}")
    if "start_pos" in entity:
        start, end = entity.get("start_pos"), entity.get("end_pos")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise InputError(
                f"{where}: start_pos/end_pos ({start}, {end}) out of range for a text of {len(text)} chars"
            )
        return text[start:end], label
    mention = entity.get("text", entity.get("entity"))
    if not isinstance(mention, str) or not mention:
        raise InputError(f"{where}: needs start_pos/end_pos or a 'text', got {entity!r}")
    return mention, label


def parse_doc(record: Record) -> NERDoc:
    """A CCKS-2019 record as an `NERDoc` (errors name file:line and the entity index)."""
    text = require_field(record, "originalText")
    entities = require_field(record, "entities", list)
    return NERDoc(text, {_entity_pair(record, text, entity, i) for i, entity in enumerate(entities)})


def entity_types(docs: list[NERDoc]) -> list[str]:
    """Types to ask for: CCKS-2019's six, then any other type the gold data uses (other datasets)."""
    seen = {label for doc in docs for _, label in doc.entities}
    return list(CCKS_TYPES) + sorted(seen - set(CCKS_TYPES))


def build_prompt(text: str, types: list[str]) -> str:
    return (
        f"请找出下面医疗文本中的所有命名实体，实体类型包括：{'、'.join(types)}。\n"
        "每行输出一个实体，格式为“类型：实体”；没有实体时输出“无”。\n\n"
        f"文本：{text}"
    )


def _resolve_type(name: str, types: list[str]) -> str | None:
    if name in types:
        return name
    matches = [t for t in types if name and (name in t or t in name)]
    return matches[0] if len(matches) == 1 else None


def parse_entities(output: str, types: list[str]) -> set[tuple[str, str]]:
    """Entities listed in a model's `类型：实体` lines (see the module docstring for the rules)."""
    found: set[tuple[str, str]] = set()
    for line in output.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        parts = re.split(r"[：:]", line, maxsplit=1)
        if len(parts) != 2:
            continue
        left, right = parts[0].strip(_STRIP), parts[1].strip()
        label = _resolve_type(left, types)
        if label is None and _resolve_type(right.strip(_STRIP), types) is not None:
            left, right = right.strip(_STRIP), left
            label = _resolve_type(left, types)
        label = label or left
        for mention in _SEPARATORS.split(right):
            mention = mention.strip(_STRIP)
            if mention not in NO_ENTITY:
                found.add((mention, label))
    return found


@dataclass
class NERTask:
    """The `ner` task: generate entity lists, parse them, score against the gold sets."""

    docs: list[NERDoc]
    max_new_tokens: int
    name: str = "ner"
    needs_logprobs: bool = False

    def requests(self) -> list[EvalRequest]:
        types = entity_types(self.docs)
        return [
            EvalRequest(f"{self.name}/{i}", [{"role": "user", "content": build_prompt(doc.text, types)}],
                        max_new_tokens=self.max_new_tokens)
            for i, doc in enumerate(self.docs)
        ]

    def score(self, responses: dict[str, EvalResponse]) -> TaskResult:
        """Micro P/R/F1 (in %) and the same per entity type."""
        types = entity_types(self.docs)
        outputs = [lookup(responses, f"{self.name}/{i}").text for i in range(len(self.docs))]
        predicted = [parse_entities(output, types) for output in outputs]
        micro, by_type = entity_prf(predicted, [doc.entities for doc in self.docs])
        metrics = {k: 100.0 * v if k in ("precision", "recall", "f1") else v for k, v in micro.as_dict().items()}
        metrics["n"] = len(self.docs)
        per_type = {
            label: {"precision": 100.0 * c.precision, "recall": 100.0 * c.recall, "f1": 100.0 * c.f1,
                    "support": c.tp + c.fn}
            for label, c in by_type.items()
        }
        rows = [
            {"text": doc.text, "output": output, "gold": sorted(doc.entities), "predicted": sorted(pred)}
            for doc, output, pred in zip(self.docs, outputs, predicted)
        ]
        return TaskResult(metrics, {"by_type": per_type}, rows)


def load_task(paths: list[Path], max_new_tokens: int, max_items: int) -> NERTask:
    """Read CCKS-2019 JSONL files into the `ner` task."""
    return NERTask([parse_doc(record) for record in read_records(paths, max_items)], max_new_tokens)
