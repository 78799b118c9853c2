"""Single-turn question/answer pairs over the fact table.

A pair is identified by a key (kind, entity name, question type). Splits are made over keys, so a
held-out key never appears in training in any phrasing. Each question type has several question
templates; the last one is reserved for held-out evaluation sets, so that evaluation questions are
also phrased differently from training questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from common import first_items_within, fit, is_pediatric, join_cn, strip_leading
from facts import DISEASES, DRUG_BY_NAME, DRUGS, LAB_BY_NAME, LABS
from schema import Disease, Drug, Lab

Key = tuple[str, str, str]  # (kind, entity name, question type)

QUESTIONS: dict[str, list[str]] = {
    "define": ["什么是{n}？", "{n}是一种什么病？", "请简单介绍一下{n}。", "{n}指的是什么病？",
        "能给我讲讲{n}是怎么回事吗？"],
    "cause": ["{n}是什么原因引起的？", "为什么会得{n}？", "{n}的病因有哪些？", "哪些因素容易引发{n}？"],
    "symptoms": ["{n}有哪些症状？", "得了{n}会有什么表现？", "{n}的典型症状是什么？",
        "{n}一般会有哪些不舒服？"],
    "dept": ["{n}应该挂哪个科？", "得了{n}去医院看什么科？", "怀疑{n}该去哪个科室？",
        "看{n}要挂哪个科室的号？"],
    "tests": ["怀疑{n}需要做哪些检查？", "{n}一般要做什么检查？", "诊断{n}要查哪些项目？",
        "医生怀疑是{n}，通常会安排什么检查？"],
    "treatment": ["{n}怎么治疗？", "得了{n}一般怎么治？", "{n}的治疗方法有哪些？", "{n}需要怎么处理和用药？"],
    "advice": ["{n}患者平时要注意什么？", "得了{n}生活上该怎么调理？", "{n}在生活方式上有什么建议？",
        "家里人得了{n}，日常要注意哪些？"],
    "red_flags": ["{n}出现什么情况需要马上去医院？", "{n}有哪些危险信号？",
        "得了{n}，哪些症状说明病情加重了？", "{n}患者什么时候必须立即就医？"],
    "people": ["哪些人容易得{n}？", "{n}的高危人群有哪些？", "{n}好发于哪些人？"],
    "indication": ["{n}是治什么的？", "{n}有什么作用？", "{n}属于什么药，主要用来治什么？",
        "医生给我开了{n}，这个药是干什么用的？"],
    "dose": ["{n}一次吃多少？", "{n}的用法用量是什么？", "{n}怎么用，剂量是多少？",
        "成人使用{n}一般是什么剂量？"],
    "contraindication": ["哪些人不能用{n}？", "{n}有什么禁忌？", "{n}的禁忌证有哪些？",
        "什么情况下不能使用{n}？"],
    "adverse": ["{n}有什么副作用？", "{n}的不良反应有哪些？", "用{n}要警惕哪些不良反应？",
        "使用{n}可能出现什么副作用？"],
    "notes": ["服用{n}要注意什么？", "用{n}期间有哪些注意事项？", "{n}使用时需要注意哪些问题？",
        "使用{n}有什么要特别当心的地方？"],
    "range": ["{n}的正常值是多少？", "{n}的参考范围是多少？", "化验单上{a}的正常范围是多少？",
        "{n}（{a}）正常应该是多少？"],
    "high": ["{n}偏高说明什么？", "{n}升高是什么原因？", "化验{a}高了意味着什么？",
        "{n}高于参考范围常见于哪些情况？"],
    "low": ["{n}偏低说明什么？", "{n}降低常见于什么情况？", "化验{a}低了是怎么回事？",
        "{n}低于正常值可能是什么原因？"],
}
PREFIXES = ["", "", "", "请问", "医生您好，", "想咨询一下，", "你好，"]
DISEASE_TYPES = ("define", "cause", "symptoms", "dept", "tests", "treatment", "advice", "red_flags", "people")
DRUG_TYPES = ("indication", "dose", "contraindication", "adverse", "notes")
LAB_TYPES = ("range", "high", "low")
DISEASE_BY_NAME = {d.name: d for d in DISEASES}


def all_keys() -> list[Key]:
    """Every question this fact table can answer, in a stable order."""
    keys: list[Key] = []
    for disease in DISEASES:
        keys += [("disease", disease.name, q) for q in DISEASE_TYPES if q != "people" or disease.people]
    for drug in DRUGS:
        keys += [("drug", drug.name, q) for q in DRUG_TYPES]
    for lab in LABS:
        keys += [("lab", lab.name, q) for q in LAB_TYPES if q != "low" or lab.low]
    return keys


def entity(key: Key) -> Disease | Drug | Lab:
    kind, name, _ = key
    return {"disease": DISEASE_BY_NAME, "drug": DRUG_BY_NAME, "lab": LAB_BY_NAME}[kind][name]


def question(key: Key, rng: random.Random, held_out: bool = False) -> str:
    """Phrase the question; held-out sets use the reserved last template and no prefix."""
    kind, name, qtype = key
    templates = QUESTIONS[qtype]
    template = templates[-1] if held_out else rng.choice(templates[:-1])
    abbr = entity(key).abbr if kind == "lab" else ""
    text = template.format(n=name, a=abbr or name)
    return text if held_out else rng.choice(PREFIXES) + text


def answer(key: Key, rng: random.Random, facts_from: Disease | Drug | Lab | None = None) -> str:
    """The reference answer; facts_from swaps in another entity's facts (for wrong answers)."""
    _, name, qtype = key
    return ANSWERS[qtype](facts_from or entity(key), name, rng)


def symptom_sentence(d: Disease, name: str, limit: int = 70) -> str:
    quiet = [s for s in d.symptoms if "无明显症状" in s or "无症状" in s]
    rest = tuple(s for s in d.symptoms if s not in quiet)
    items = join_cn(first_items_within(rest, limit))
    if quiet:
        return f"{name}{quiet[0]}，部分患者可有{items}等表现。"
    return f"{name}的常见表现有{items}等。"


def _define(d: Disease, name: str, rng: random.Random) -> str:
    extra = [f"易患人群：{d.people}。" if d.people else "", f"一般在{d.dept}诊治。"]
    rng.shuffle(extra)
    return fit([f"{name}是{d.define}。", *extra], 200)


def _cause(d: Disease, name: str, rng: random.Random) -> str:
    lead = rng.choice([f"{name}的病因和诱因：", f"{name}的发生主要与以下因素有关：", ""])
    return fit([f"{lead}{d.cause}。", f"了解这些因素有助于预防，例如{d.advice[0]}。"], 200)


def _symptoms(d: Disease, name: str, rng: random.Random) -> str:
    return fit([symptom_sentence(d, name), f"查体可见{d.signs}。", f"如果出现{d.red_flags[0]}，应及时就医。"], 200)


def _dept(d: Disease, name: str, rng: random.Random) -> str:
    alternatives = [dept for dept in d.alt_depts if dept not in ("急诊科", "全科")][:2]
    if d.urgent:
        text = f"怀疑{name}时应立即拨打120或直接去急诊科，明确诊断后一般由{d.dept}负责后续治疗。"
    else:
        text = f"{name}一般到{d.dept}就诊"
        text += f"，也可以到{join_cn(alternatives, '或')}就诊。" if alternatives else "。"
    parts = [text]
    if is_pediatric(d) and d.dept != "儿科":
        parts.append("儿童患者可先到儿科就诊。")
    tests = join_cn([t for t, _ in d.tests[:2]])
    parts.append(f"医生通常会根据病情安排{tests}等检查。")
    return fit(parts, 200)


def _tests(d: Disease, name: str, rng: random.Random) -> str:
    pieces = [f"{t}（{f}）" for t, f in d.tests]
    tail = (f"其中{d.key_test}对诊断最有价值。" if d.key_test else "") + "具体检查项目需由医生根据病情决定。"
    chosen = first_items_within(tuple(pieces), 200 - len(tail) - len(name) - 14, sep="；")
    return f"怀疑{name}时常用的检查有：{'；'.join(chosen)}。{tail}"


def _treatment(d: Disease, name: str, rng: random.Random) -> str:
    lead = rng.choice([f"{name}的治疗原则是：", f"{name}的治疗要点：", ""])
    parts = [f"{lead}{d.treatment}。"]
    if d.drugs:
        parts.append(f"常用药物有{join_cn(d.drugs[:3])}等，须在医生指导下使用，不要自行购药服用。")
    if d.urgent:
        parts.insert(0, f"{name}需要尽快到医院处理。")
    return fit(parts, 200)


def _advice(d: Disease, name: str, rng: random.Random) -> str:
    items = first_items_within(d.advice, 150, sep="；")
    return fit([f"{name}患者日常需要注意：{'；'.join(items)}。", "如症状加重请及时就医。"], 200)


def _red_flags(d: Disease, name: str, rng: random.Random) -> str:
    flags = join_cn([strip_leading(f, "出现") for f in first_items_within(d.red_flags, 110)], "或")
    if d.urgent:
        return f"{name}本身就需要紧急处理。如果出现{flags}，应立即拨打120或到急诊就诊。"
    return fit([f"{name}患者如果出现{flags}，说明病情可能较重，应尽快就医。", "平时按医生要求定期复诊。"], 200)


def _people(d: Disease, name: str, rng: random.Random) -> str:
    signs = join_cn([s for s in d.symptoms if "无" not in s][:2])
    return f"{name}的易患人群：{d.people}。这些人群如果出现{signs}等表现，应及早就医检查。"


def _indication(g: Drug, name: str, rng: random.Random) -> str:
    return f"{name}属于{g.cls}，主要用于{g.indication}。是否适合您使用，需要医生根据病情判断。"


def _dose(g: Drug, name: str, rng: random.Random) -> str:
    return fit([f"{name}的常规用法用量：{g.dose}。",
                "以上为一般成人剂量，儿童、老年人及肝肾功能不全者需调整，请以医嘱和说明书为准。"], 200)


def _contraindication(g: Drug, name: str, rng: random.Random) -> str:
    lead = rng.choice([f"{name}的禁忌：", f"关于{name}的禁忌，", ""])
    return fit([f"{lead}{g.contraindication}。", "用药前请告知医生过敏史、基础疾病以及是否怀孕或哺乳。"], 200)


def _adverse(g: Drug, name: str, rng: random.Random) -> str:
    parts = [f"{name}常见的不良反应有{g.adverse}。"]
    if g.hallmark:
        parts.append(f"其中需要特别警惕的是{g.hallmark}。")
    parts.append("用药后如出现明显不适，应及时就医。")
    return fit(parts, 200)


def _notes(g: Drug, name: str, rng: random.Random) -> str:
    return fit([f"使用{name}时需要注意：{g.notes}。", "如有疑问请咨询医生或药师。"], 200)


def _range(lab: Lab, name: str, rng: random.Random) -> str:
    return (f"{name}的成人参考范围一般为{lab.range_text}，属于{lab.panel}检查项目。"
            "不同医院的检测方法可能不同，应以化验单上标注的参考范围为准。")


def _high(lab: Lab, name: str, rng: random.Random) -> str:
    return f"{name}升高常见于{lab.high}。单次结果异常需要结合症状和其他检查综合判断，建议带着化验单咨询医生。"


def _low(lab: Lab, name: str, rng: random.Random) -> str:
    return f"{name}降低常见于{lab.low}。单次结果异常需要结合症状和其他检查综合判断，建议带着化验单咨询医生。"


ANSWERS: dict[str, Callable] = {
    "define": _define, "cause": _cause, "symptoms": _symptoms, "dept": _dept, "tests": _tests,
    "treatment": _treatment, "advice": _advice, "red_flags": _red_flags, "people": _people,
    "indication": _indication, "dose": _dose, "contraindication": _contraindication,
    "adverse": _adverse, "notes": _notes, "range": _range, "high": _high, "low": _low,
}
