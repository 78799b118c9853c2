"""Checks on generated text that a template can get wrong without any exception being raised.

    python scripts/embedded_data/check.py [DATA_DIR]

* doubled words and phrases: "出现出现", "…检查等检查", a clause said twice in a row;
* a result verb followed by a purpose ("血常规可见排除贫血");
* hedged textbook signs given as one patient's examination ("查体：…可有…");
* under-triage: advice about an emergency (a disease that needs emergency care, or a sign such as
  one-sided weakness, crushing chest pain or anaphylaxis) that does not send the patient to
  emergency care (120 or 急诊).

build.py runs every check on every file it writes and refuses to write data that fails; the tests
run them on the bundled files.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

CJK = "\u4e00-\u9fff"
# A run of 2+ CJK characters immediately repeated ("出现出现", "注意休息注意休息").
DOUBLED = re.compile(rf"([{CJK}]{{2,}})\1|(应|的|和|或|与|及)\2")
# "检查等检查", "治疗等治疗": a noun, a list marker, the same noun again.
LIST_ECHO = re.compile(rf"([{CJK}]{{2}})等\1")
# A result verb followed by what a test is for, not what it showed.
RESULT_THEN_PURPOSE = re.compile(r"(?:示|可见|提示|显示)(?:排除|明确|评估|用于|筛查|寻找|判断)")
# Hedged textbook wording inside one patient's examination findings.
HEDGED_EXAM = re.compile(r"查体[：:][^。\n]*(?:可有|部分患者|重症者|严重者)")
# A clause repeated verbatim right after itself ("…X。X。"): a template that emits a part twice.
CLAUSE = re.compile(r"[^，。；：！？、\n]+")

EMERGENCY_SIGNS = ("口角歪斜", "一侧肢体无力", "肢体无力", "言语不清", "意识障碍", "意识不清", "意识模糊", "昏迷",
                   "持续胸痛", "胸痛持续", "剧烈胸痛", "呕血", "大量出血", "休克", "喉头水肿", "呼吸窘迫",
                   "抽搐不止", "大汗淋漓", "面部水肿伴呼吸困难", "晕厥")
ADVICE = re.compile(r"(?:应|请|需|要|建议|尽快|及时|及早|立即)[^，。；]{0,6}(?:就医|就诊|去医院|到医院|复诊|看医生)")
EMERGENCY_CARE = re.compile(r"120|急诊|急救")


@dataclass(frozen=True)
class Problem:
    where: str  # "file:line"
    kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.excerpt}"


def _context(text: str, start: int, end: int, pad: int = 12) -> str:
    return text[max(0, start - pad):end + pad].replace("\n", " ")


def text_problems(text: str, urgent_names: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(kind, excerpt) of every problem in one text (a passage, an answer, a question)."""
    found = []
    plain = text.replace("越来越", "越发")  # "越来越重" is not a doubled "来越"
    for pattern, kind in ((DOUBLED, "doubled phrase"), (LIST_ECHO, "doubled word around 等"),
                          (RESULT_THEN_PURPOSE, "result verb followed by a purpose"),
                          (HEDGED_EXAM, "hedged signs as a patient's findings")):
        found += [(kind, _context(plain, m.start(), m.end())) for m in pattern.finditer(plain)
                  if not m.group(0).startswith("一")]  # "一阵一阵", "一跳一跳": ordinary reduplication
    clauses = [c.strip() for c in CLAUSE.findall(text)]
    found += [("clause said twice", a) for a, b in zip(clauses, clauses[1:]) if a == b and len(a) >= 4]
    found += [("emergency not triaged to 120/急诊", s) for s in under_triaged(text, urgent_names)]
    return found


def under_triaged(text: str, urgent_names: tuple[str, ...]) -> list[str]:
    """Sentences giving care advice about an emergency sign without sending the patient to emergency
    care, and texts naming an emergency disease whose advice never mentions 120/急诊."""
    bad = []
    for sentence in re.split(r"[。！？\n]", text):
        if any(sign in sentence for sign in EMERGENCY_SIGNS) and ADVICE.search(sentence) \
                and not EMERGENCY_CARE.search(sentence):
            bad.append(sentence)
    # A text about an emergency disease (it is named at the start: a passage title, the subject of an
    # answer) must send the reader to emergency care somewhere.
    named = [name for name in urgent_names if name in text[:24]]
    if named and ADVICE.search(text) and not EMERGENCY_CARE.search(text):
        bad.append(f"{named[0]}: {text[:60]}")
    return bad


def answer_texts(row: dict) -> Iterator[tuple[str, bool]]:
    """(text, gives advice) for every string of a generated row. Passages, answers (gpt turns, QA
    answers, chosen answers) give advice; questions, MCQ items and NER notes do not. Rejected
    answers are meant to be bad and are not checked."""
    for key, value in row.items():
        if key == "rejected":
            continue
        if key == "conversations":
            for turn in value:
                yield turn["value"], turn["from"] == "gpt"
        elif isinstance(value, str):
            yield value, key in ("text", "answer", "chosen")
        elif isinstance(value, dict):
            yield from ((v, False) for v in value.values() if isinstance(v, str))


def check_files(files: dict[str, list[dict]], urgent_names: tuple[str, ...]) -> list[Problem]:
    """Every problem in generated rows (`{relative path: rows}`)."""
    problems = []
    for name, rows in sorted(files.items()):
        for line, row in enumerate(rows, start=1):
            for text, advises in answer_texts(row):
                found = text_problems(text, urgent_names if advises else ())
                if not advises:  # signs listed in a question or an option advise nobody
                    found = [(kind, excerpt) for kind, excerpt in found if not kind.startswith("emergency")]
                problems += [Problem(f"{name}:{line}", kind, excerpt) for kind, excerpt in found]
    return problems


def read_dir(root: Path) -> dict[str, list[dict]]:
    return {path.relative_to(root).as_posix(): [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                                 if line.strip()]
            for path in sorted(root.rglob("*.jsonl"))}


def main() -> int:
    from facts import DISEASES

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "chimed_ray/resources/data"
    problems = check_files(read_dir(root), tuple(d.name for d in DISEASES if d.urgent))
    for problem in problems[:50]:
        print(problem)
    print(f"{len(problems)} problems in {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
