"""Single-turn question/answer pairs over the fact table.

A pair is identified by a key (kind, entity name, question type). Splits are made over keys, so a
held-out key never appears in training in any phrasing. Each question type has several question
templates; the last one is reserved for held-out evaluation sets, so that evaluation questions are
also phrased differently from training questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from common import EMERGENCY_ACTION, first_items_within, fit, flag_action, is_pediatric, join_cn, strip_leading, tests_phrase
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


def answer(key: Key, rng: random.Random, facts_from: Disease | Drug | Lab | None = None, style: str = "train") -> str:
    """The reference answer; facts_from swaps in another entity's facts (for wrong answers).

    `style="eval"` words the answer with phrasings training never uses (the held-out QA set), so
    that evaluation measures what a model says about an entity, not recall of our boilerplate.
    """
    _, name, qtype = key
    return ANSWERS[qtype](facts_from or entity(key), name, rng, style)


# Boilerplate sentences: (training wording, held-out evaluation wording).
PHRASES = {
    "define_dept": ("一般在{dept}诊治。", "通常由{dept}医生负责诊疗。"),
    "prevent": ("了解这些因素有助于预防，例如{advice}。", "针对这些因素，{advice}可以降低发病风险。"),
    "see_doctor": ("及时就医", "及早看医生"),
    "tests_by_doctor": ("医生通常会根据病情安排{tests}。", "就诊时一般会做{tests}。"),
    "tests_tail": ("具体检查项目需由医生根据病情决定。", "最终查哪些项目以接诊医生的判断为准。"),
    "drugs": ("常用药物有{drugs}等，须在医生指导下使用，不要自行购药服用。", "药物方面多用{drugs}等，用药方案要由医生制定。"),
    "daily": ("{name}患者日常需要注意：{items}。", "{name}患者在生活中可以这样做：{items}。"),
    "worse": ("如症状加重请及时就医。", "一旦病情变化要及早复诊。"),
    "follow_up": ("平时按医生要求定期复诊。", "病情稳定时也要按约随访。"),
    "who_fits": ("是否适合您使用，需要医生根据病情判断。", "能不能用要先请医生评估。"),
    "adult_dose": ("以上为一般成人剂量，儿童、老年人及肝肾功能不全者需调整，请以医嘱和说明书为准。",
                   "这是成人的常用量，儿童、老人和肝肾功能差的人要减量或换药，实际剂量听医生的。"),
    "tell_doctor": ("用药前请告知医生过敏史、基础疾病以及是否怀孕或哺乳。", "开药前要主动说明过敏史、其他疾病和妊娠哺乳情况。"),
    "discomfort": ("用药后如出现明显不适，应及时就医。", "服药后感觉明显不舒服时要停药并看医生。"),
    "ask_pharmacist": ("如有疑问请咨询医生或药师。", "拿不准时可以问问药师。"),
    "lab_method": ("不同医院的检测方法可能不同，应以化验单上标注的参考范围为准。", "各家医院的仪器和试剂不同，看化验单上自带的参考值更准确。"),
    "lab_single": ("单次结果异常需要结合症状和其他检查综合判断，建议带着化验单咨询医生。",
                   "一次结果不正常不能下结论，要结合症状和复查结果，由医生综合分析。"),
}


def phrase(key: str, style: str, **values: str) -> str:
    train, held_out = PHRASES[key]
    return (held_out if style == "eval" else train).format(**values)


def symptom_sentence(d: Disease, name: str, limit: int = 70, style: str = "train") -> str:
    quiet = [s for s in d.symptoms if "无明显症状" in s or "无症状" in s]
    rest = tuple(s for s in d.symptoms if s not in quiet)
    items = join_cn(first_items_within(rest, limit))
    if quiet:
        return f"{name}{quiet[0]}，部分患者可有{items}等表现。"
    return f"{name}主要表现为{items}等。" if style == "eval" else f"{name}的常见表现有{items}等。"


def red_flag_advice(d: Disease, flags: list[str], style: str) -> str:
    """'如果出现A或B，应立即拨打120或到急诊就诊。' with emergency care for emergency signs."""
    shown = join_cn([strip_leading(f, "出现") for f in flags], "或")
    action = flag_action(flags, d.urgent)
    lead = "一旦有" if style == "eval" else "如果出现"
    return f"{lead}{shown}，应{action}。"


def _define(d: Disease, name: str, rng: random.Random, style: str) -> str:
    extra = [f"易患人群：{d.people}。" if d.people else "", phrase("define_dept", style, dept=d.dept)]
    rng.shuffle(extra)
    lead = f"{name}指的是{d.define}。" if style == "eval" else f"{name}是{d.define}。"
    return fit([lead, *extra], 200)


def _cause(d: Disease, name: str, rng: random.Random, style: str) -> str:
    leads = [f"{name}的病因和诱因：", f"{name}的发生主要与以下因素有关：", ""] if style != "eval" else [f"引起{name}的因素包括："]
    lead = rng.choice(leads)
    return fit([f"{lead}{d.cause}。", phrase("prevent", style, advice=d.advice[0])], 200)


def _symptoms(d: Disease, name: str, rng: random.Random, style: str) -> str:
    parts = [symptom_sentence(d, name, style=style), f"体征：{d.signs}。", red_flag_advice(d, [d.red_flags[0]], style)]
    if d.urgent:
        parts.insert(1, f"怀疑{name}时应{EMERGENCY_ACTION}。")
    return fit(parts, 200)


def _dept(d: Disease, name: str, rng: random.Random, style: str) -> str:
    alternatives = [dept for dept in d.alt_depts if dept not in ("急诊科", "全科")][:2]
    if d.urgent:
        text = f"怀疑{name}时应{EMERGENCY_ACTION}，明确诊断后一般由{d.dept}负责后续治疗。"
    else:
        text = f"{name}一般到{d.dept}就诊" if style != "eval" else f"{name}首选{d.dept}"
        text += f"，也可以到{join_cn(alternatives, '或')}就诊。" if alternatives else "。"
    parts = [text]
    if is_pediatric(d) and d.dept != "儿科":
        parts.append("儿童患者可先到儿科就诊。")
    parts.append(phrase("tests_by_doctor", style, tests=tests_phrase([t for t, _ in d.tests[:2]])))
    return fit(parts, 200)


def _tests(d: Disease, name: str, rng: random.Random, style: str) -> str:
    pieces = [f"{t}（{f}）" for t, f in d.tests]
    key = (f"其中{d.key_test}对诊断最有价值。" if d.key_test else "")
    tail = key + phrase("tests_tail", style)
    chosen = first_items_within(tuple(pieces), 200 - len(tail) - len(name) - 14, sep="；")
    lead = f"诊断{name}常做的检查：" if style == "eval" else f"怀疑{name}时常用的检查有："
    return f"{lead}{'；'.join(chosen)}。{tail}"


def _treatment(d: Disease, name: str, rng: random.Random, style: str) -> str:
    leads = [f"{name}的治疗原则是：", f"{name}的治疗要点：", ""] if style != "eval" else [f"治疗{name}主要是"]
    parts = [f"{rng.choice(leads)}{d.treatment}。"]
    if d.drugs:
        parts.append(phrase("drugs", style, drugs=join_cn(d.drugs[:3])))
    if d.urgent:
        parts.insert(0, f"{name}属于急症，应{EMERGENCY_ACTION}。")
    return fit(parts, 200)


def _advice(d: Disease, name: str, rng: random.Random, style: str) -> str:
    items = first_items_within(d.advice, 130, sep="；")
    worse = f"病情突然加重时应{EMERGENCY_ACTION}。" if d.urgent else phrase("worse", style)
    return fit([phrase("daily", style, name=name, items="；".join(items)), worse], 200)


def _red_flags(d: Disease, name: str, rng: random.Random, style: str) -> str:
    flags = first_items_within(d.red_flags, 110)
    if d.urgent:
        return f"{name}本身就需要紧急处理。{red_flag_advice(d, flags, style)}"
    return fit([f"{name}患者{red_flag_advice(d, flags, style)}", phrase("follow_up", style)], 200)


def _people(d: Disease, name: str, rng: random.Random, style: str) -> str:
    shown = [s for s in d.symptoms if "无" not in s][:2]
    signs = join_cn(shown)
    action = EMERGENCY_ACTION if d.urgent or flag_action(shown) == EMERGENCY_ACTION else phrase("see_doctor", style)
    return f"{name}的易患人群：{d.people}。这些人群如果出现{signs}等表现，应{action}。"


def _indication(g: Drug, name: str, rng: random.Random, style: str) -> str:
    return f"{name}属于{g.cls}，主要用于{g.indication}。{phrase('who_fits', style)}"


def _dose(g: Drug, name: str, rng: random.Random, style: str) -> str:
    return fit([f"{name}的常规用法用量：{g.dose}。", phrase("adult_dose", style)], 200)


def _contraindication(g: Drug, name: str, rng: random.Random, style: str) -> str:
    leads = [f"{name}的禁忌：", f"关于{name}的禁忌，", ""] if style != "eval" else [f"以下情况不能用{name}："]
    return fit([f"{rng.choice(leads)}{g.contraindication}。", phrase("tell_doctor", style)], 200)


def _adverse(g: Drug, name: str, rng: random.Random, style: str) -> str:
    parts = [f"{name}常见的不良反应有{g.adverse}。"]
    if g.hallmark and g.hallmark not in g.adverse:
        parts.append(f"其中需要特别警惕的是{g.hallmark}。")
    parts.append(phrase("discomfort", style))
    return fit(parts, 200)


def _notes(g: Drug, name: str, rng: random.Random, style: str) -> str:
    return fit([f"使用{name}时需要注意：{g.notes}。", phrase("ask_pharmacist", style)], 200)


def _range(lab: Lab, name: str, rng: random.Random, style: str) -> str:
    panel = lab.panel if lab.panel.endswith("检查") else lab.panel + "检查"
    return f"{name}的成人参考范围一般为{lab.range_text}，属于{panel}项目。{phrase('lab_method', style)}"


def _high(lab: Lab, name: str, rng: random.Random, style: str) -> str:
    return f"{name}升高常见于{lab.high}。{phrase('lab_single', style)}"


def _low(lab: Lab, name: str, rng: random.Random, style: str) -> str:
    return f"{name}降低常见于{lab.low}。{phrase('lab_single', style)}"


ANSWERS: dict[str, Callable] = {
    "define": _define, "cause": _cause, "symptoms": _symptoms, "dept": _dept, "tests": _tests,
    "treatment": _treatment, "advice": _advice, "red_flags": _red_flags, "people": _people,
    "indication": _indication, "dose": _dose, "contraindication": _contraindication,
    "adverse": _adverse, "notes": _notes, "range": _range, "high": _high, "low": _low,
}
