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
# Emergencies whose onset is counted in minutes or hours: a case of "3 days" cannot be thrombolysed
# "within 4.5 h", and nobody waits a week with an infarct or anaphylaxis.
HYPERACUTE = {
    "急性心肌梗死": ("1小时", "2小时", "3小时"), "急性缺血性脑卒中": ("1小时", "2小时", "3小时"),
    "脑出血": ("1小时", "2小时", "3小时"), "严重过敏反应": ("10分钟", "20分钟", "半小时"),
    "热射病": ("1小时", "2小时"), "一氧化碳中毒": ("1小时", "2小时", "3小时"),
    "肺血栓栓塞症": ("2小时", "4小时", "6小时"), "急性闭角型青光眼": ("3小时", "6小时", "10小时"),
    "异位妊娠": ("2小时", "5小时", "8小时"), "急性阑尾炎": ("8小时", "12小时", "1天"),
    "急性胰腺炎": ("6小时", "10小时", "1天"), "急性胆囊炎": ("10小时", "1天", "2天"),
    "肠梗阻": ("12小时", "1天", "2天"), "糖尿病酮症酸中毒": ("1天", "2天", "3天"),
    "子痫前期": ("1天", "3天", "1周"),
}
EMERGENCY_ACTION = "立即拨打120或到急诊就诊"


def course(disease: Disease) -> str:
    """The disease's tempo: hyperacute (minutes-hours), acute (days), subacute (weeks), chronic."""
    if disease.name in HYPERACUTE or disease.urgent:
        return "hyperacute"
    if disease.age[1] == 0 or "急性" in disease.name or disease.name in ACUTE:
        return "acute"
    return "subacute" if disease.name in SUBACUTE else "chronic"


def onset(disease: Disease, rng: random.Random) -> str:
    """How long the complaint has lasted, consistent with the disease's course."""
    if disease.age[1] == 0:
        return "1天"
    tempo = course(disease)
    if tempo == "hyperacute":
        return rng.choice(HYPERACUTE.get(disease.name, ("数小时", "1天")))
    if tempo == "acute":
        return rng.choice(["2天", "3天", "5天"])
    if tempo == "subacute":
        return rng.choice(["2周", "1个月", "2个月"])
    return rng.choice(["3个月", "半年", "1年", "2年"])


def evolution(disease: Disease, rng: random.Random) -> str:
    """How the complaint developed, in words that fit the course."""
    return rng.choice({
        "hyperacute": ["突然起病", "起病急骤", "急性起病，迅速加重"],
        "acute": ["急性起病", "逐渐加重", "症状持续"],
        "subacute": ["逐渐加重", "症状持续", "时轻时重"],
        "chronic": ["反复发作", "时轻时重", "缓慢进展"],
    }[course(disease)])


def tests_phrase(names: list[str] | tuple[str, ...]) -> str:
    """'A和B等检查', without doubling when the last name already says 检查 ('分泌物检查等', not '…检查等检查')."""
    text = join_cn(list(names)) + "等"
    return text if text.endswith(("检查等", "检测等", "试验等", "测定等", "监测等")) else text + "检查"


HEDGED = ("部分", "重症者", "严重者", "晚期", "病程长者", "慢性者", "脱水时", "发作时", "穿孔后", "重度者", "出血量大")


def patient_signs(disease: Disease) -> str:
    """The textbook signs as one patient's findings: hedged clauses ('部分患者可有…') dropped,
    '可有X' stated as '伴X', '可见X' as '见X'; nothing left reads '未见明显异常体征'."""
    kept = []
    for clause in disease.signs.split("，"):
        if clause.startswith(HEDGED) or any(h in clause for h in ("部分", "多无", "一般无")):
            continue
        clause = clause.replace("多伴", "伴").replace("常伴", "伴")
        for hedge, plain in (("可有", "伴"), ("可见", "见"), ("可呈", "呈")):
            clause = plain + clause[len(hedge):] if clause.startswith(hedge) else clause.replace(hedge, plain[-1:] if hedge != "可有" else "有")
        kept.append(clause)
    return "，".join(dict.fromkeys(kept)) or "未见明显异常体征"


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


# Danger signs that need emergency care whatever the disease: a red flag containing one of them is
# triaged to 急诊/120, never to "see a doctor soon" (a stroke sign in atrial fibrillation is a stroke).
EMERGENCY_WORDS = ("胸痛", "呼吸困难", "意识", "昏迷", "嗜睡", "神志", "晕厥", "肢体无力", "言语不清", "口角歪斜",
                   "抽搐", "呕血", "黑便", "咯血", "血压下降", "发绀", "不能平卧", "端坐呼吸", "大汗淋漓", "剧烈腹痛",
                   "剧烈头痛", "腹痛剧烈", "喉头", "不能回纳", "休克", "说话不能成句", "呼吸深快", "大量出血", "板样",
                   "视力急剧", "粉红色泡沫痰", "不能站立", "心率超过", "呕吐不止", "停止排气", "失禁", "会阴部麻木",
                   "无尿")


def is_emergency_flag(flag: str) -> bool:
    return any(word in flag for word in EMERGENCY_WORDS)


def flag_action(flags: list[str] | tuple[str, ...], urgent: bool = False) -> str:
    """What to do when these red flags appear: emergency care if any is an emergency sign."""
    if urgent or any(is_emergency_flag(flag) for flag in flags):
        return EMERGENCY_ACTION
    return "尽快到医院就诊"


PURPOSE_WORDS = ("明确", "评估", "用于", "排除", "筛查", "寻找", "判断", "检测", "了解", "监测")


def test_result(test: str, finding: str, verb: str = "示") -> str:
    """'胸部X线示片状阴影' for a result; '血常规用于排除贫血' for a purpose; no doubled verb when the
    finding already starts with one ('可见…', '提示…')."""
    if finding.startswith(("可见", "示", "提示", "显示", "可")):
        return f"{test}{finding}"
    if any(word in finding.split("，")[0] for word in PURPOSE_WORDS):
        return f"{test}{'' if finding.startswith('用于') else '可用于'}{finding}"
    return f"{test}{verb}{finding}"
