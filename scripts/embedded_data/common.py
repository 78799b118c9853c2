"""Small helpers shared by every generator: Chinese list joining, patient demographics, writing."""

from __future__ import annotations

import json
import random
from pathlib import Path

from schema import Disease

SEED = 20240611
URGENT_ADVICE = "请立即到最近的医院急诊就诊，必要时拨打120，不要在家自行服药观察。"


def rng_for(stream: str) -> random.Random:
    """A private RNG per output stream, so that changing one generator does not reshuffle others."""
    return random.Random(f"{SEED}:{stream}")


def join_cn(items: list[str] | tuple[str, ...], last: str = "和") -> str:
    """Join items the Chinese way: 'A、B和C'."""
    items = [item for item in items if item]
    if len(items) <= 1:
        return "".join(items)
    return "、".join(items[:-1]) + last + items[-1]


def sentence(text: str) -> str:
    """End text with a full stop unless it already ends with punctuation."""
    text = text.strip()
    return text if text.endswith(("。", "！", "？", "”")) else text + "。"


def fit(parts: list[str], limit: int) -> str:
    """Concatenate sentences in order, dropping trailing optional ones that would exceed limit."""
    out = parts[0]
    for part in parts[1:]:
        if len(out) + len(part) <= limit:
            out += part
    return out


def strip_leading(text: str, prefix: str) -> str:
    return text[len(prefix):] if text.startswith(prefix) else text


def first_items_within(items: tuple[str, ...], limit: int, sep: str = "、", minimum: int = 1) -> list[str]:
    """The longest prefix of items whose joined length stays within limit (at least minimum)."""
    chosen: list[str] = []
    for item in items:
        if len(chosen) >= minimum and len(sep.join([*chosen, item])) > limit:
            break
        chosen.append(item)
    return chosen


def presenting_symptoms(disease: Disease) -> tuple[str, ...]:
    """Symptoms a patient can present with (drops entries such as '多数无明显症状')."""
    return tuple(s for s in disease.symptoms
                 if "无症状" not in s and "无明显症状" not in s and "多无" not in s and not s.startswith("起病"))


def short_define(disease: Disease, minimum: int = 14) -> str:
    """The leading clauses of the definition, at least minimum characters long."""
    clauses = disease.define.split("，")
    text = clauses[0]
    for clause in clauses[1:]:
        if len(text) >= minimum:
            break
        text += "，" + clause
    return text


SYSTEM_LABELS = {"传染病": "传染病", "新生儿疾病": "新生儿疾病", "中毒与理化损伤": "理化因素所致疾病", "眼": "眼科疾病",
                 "皮肤": "皮肤病", "妊娠相关": "妊娠相关疾病"}
PREGNANCY_WEEKS = {"妊娠期糖尿病": (24, 28), "子痫前期": (28, 36)}


def system_label(disease: Disease) -> str:
    """The organ system as a noun phrase: '呼吸系统疾病', '皮肤病', '传染病'."""
    return SYSTEM_LABELS.get(disease.system, disease.system + "疾病")


def pregnancy_note(disease: Disease, rng: random.Random) -> str:
    """'孕26周，' for diseases of pregnancy found by gestational age, else ''."""
    weeks = PREGNANCY_WEEKS.get(disease.name)
    return f"孕{rng.randint(*weeks)}周，" if weeks else ""


ACUTE = {"普通感冒", "流行性感冒", "社区获得性肺炎", "荨麻疹", "带状疱疹", "踝关节扭伤", "桡骨远端骨折", "面神经炎",
         "手足口病", "水痘", "输尿管结石", "热性惊厥", "轮状病毒肠炎", "新生儿黄疸", "细菌性痢疾", "痛风",
         "外阴阴道假丝酵母菌病", "细菌性阴道病", "下肢深静脉血栓形成"}
SUBACUTE = {"1型糖尿病", "肺结核", "甲状腺功能亢进症", "抑郁症", "双相情感障碍", "精神分裂症"}


def onset(disease: Disease, rng: random.Random) -> str:
    """How long the complaint has lasted, matching an acute or a chronic course."""
    if disease.age[1] == 0:
        return "1天"
    if disease.urgent:
        return rng.choice(["数小时", "1天", "2天"])
    if disease.name in SUBACUTE:
        return rng.choice(["2周", "1个月", "2个月"])
    if "急性" in disease.name or disease.name in ACUTE:
        return rng.choice(["2天", "3天", "5天", "1周"])
    return rng.choice(["3个月", "半年", "1年", "2年"])


def result_clause(finding: str) -> str | None:
    """The first clause of a typical finding, if it reads like a result rather than a purpose."""
    clause = finding.split("，")[0].replace("一般正常", "未见明显异常")
    purpose = ("明确", "评估", "用于", "排除", "筛查", "寻找", "判断", "检测")
    return None if any(word in clause for word in purpose) else clause


def patient_age(disease: Disease, rng: random.Random) -> tuple[int, str]:
    """A plausible age for a patient with the disease and how a record would write it."""
    low, high = disease.age
    if high == 0:
        days = rng.randint(2, 6)
        return 0, f"出生{days}天"
    age = rng.randint(low, high)
    return age, f"{age}岁"


def patient_sex(disease: Disease, rng: random.Random) -> str:
    return disease.sex or rng.choice(("男", "女"))


def is_pediatric(disease: Disease) -> bool:
    return disease.age[1] <= 12


def write_jsonl(path: Path, rows: list[dict]) -> int:
    """Write rows as UTF-8 JSON lines; return the number of bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def balanced_letters(count: int, letters: str, rng: random.Random) -> list[str]:
    """Answer letters for count questions, as even across letters as possible, in random order."""
    pool = [letters[i % len(letters)] for i in range(count)]
    rng.shuffle(pool)
    return pool
