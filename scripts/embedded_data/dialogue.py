"""Multi-turn doctor-patient dialogues: the patient describes symptoms, the doctor asks follow-up
questions, then gives a possible diagnosis, tests, treatment, self-care or warning signs.

Each disease yields FLOWS variants that differ in which follow-ups the patient asks and in which of
the two hand-written complaints opens the conversation.
"""

from __future__ import annotations

import random

from common import EMERGENCY_ACTION, URGENT_ADVICE, first_items_within, fit, flag_action, join_cn, strip_leading, test_result, tests_phrase
from schema import Disease

OPENERS = ["医生您好，{c}。", "{c}，这是怎么回事？", "大夫，{c}，需要去医院吗？", "您好，想咨询一下：{c}。",
           "{c}，有点担心，该怎么办？", "{c}。请问这是什么问题？", "医生，{c}，要紧吗？", "在吗？{c}。",
           "想问问医生，{c}，该挂什么号？", "{c}，家里人让我问问。"]
ASK_LEADS = ["了解了。为了更好地判断，想再问几个问题：", "别着急，我先了解一下情况：", "好的，请再补充一些信息：",
             "明白了。还需要确认几点：", "好的，我问您几个问题：", "先别慌，我问清楚一点：", "收到。先说说这些："]
DIAGNOSIS_LEADS = ["结合您说的情况，", "根据您描述的症状，", "从这些表现来看，", "综合这些情况，", "听下来，"]
# Held-out phrasings: the dialogue evaluation set is worded with these only.
EVAL_OPENERS = ["打扰一下医生，{c}。", "{c}，我该怎么办才好？"]
EVAL_ASK_LEADS = ["请您再说详细一点："]
EVAL_DIAGNOSIS_LEADS = ["按您讲的这些，"]
MED_QUESTIONS = ["需要吃什么药吗？", "可以自己去药店买点药吃吗？", "这个病一般怎么治疗？", "能治好吗？要怎么治？"]
ADVICE_QUESTIONS = ["平时生活上要注意些什么？", "回家以后需要怎么调理？", "饮食和作息方面有什么要注意的？"]
DANGER_QUESTIONS = ["什么情况下需要赶紧去医院？", "哪些情况说明病情加重了？", "严重吗？需要警惕哪些信号？"]
CAUSE_QUESTIONS = ["怎么会得这个病呢？", "这个病是什么原因引起的？", "我平时也挺注意的，为什么会这样？"]
# What a bystander should do while waiting for the ambulance, for emergencies where it matters.
FIRST_AID = {
    "热射病": "等待急救时把患者移到阴凉处，用冷水擦拭或喷洒全身并扇风降温。",
    "一氧化碳中毒": "先开窗通风、关闭气源，把所有人转移到空气新鲜处，昏迷者侧卧以保持呼吸道通畅。",
    "严重过敏反应": "如随身带有肾上腺素自动注射笔，立即在大腿外侧注射，并平卧、抬高双腿。",
    "急性缺血性脑卒中": "请记下发病时间，不要给患者喂水喂药。",
    "脑出血": "让患者平卧、头偏向一侧，不要喂水喂药。",
}
FLOWS = (
    ("diagnosis",),
    ("diagnosis", "medication"),
    ("diagnosis", "advice"),
    ("diagnosis", "danger"),
    ("diagnosis", "result", "medication"),
    ("diagnosis", "cause", "danger"),
)


def ask_turn(d: Disease, rng: random.Random, style: str = "train") -> str:
    if d.urgent:
        return f"这种情况可能比较紧急。{d.ask}如果症状正在加重，请不要等待，立即拨打120。"
    return rng.choice(EVAL_ASK_LEADS if style == "eval" else ASK_LEADS) + d.ask


def diagnosis_turn(d: Disease, rng: random.Random, style: str = "train") -> str:
    lead = rng.choice(EVAL_DIAGNOSIS_LEADS if style == "eval" else DIAGNOSIS_LEADS)
    tests = tests_phrase([t for t, _ in d.tests[:2]])
    if style == "eval":
        text = f"{lead}首先要想到{d.name}，确诊要靠面诊和检查。"
        visit = f"请挂{d.dept}的号，医生大概会让您做{tests}。"
    else:
        text = f"{lead}考虑{d.name}的可能性比较大，但还需要医生面诊和检查才能确诊。"
        visit = f"建议到{d.dept}就诊，可能需要做{tests}。"
    if d.urgent:
        return text + URGENT_ADVICE + FIRST_AID.get(d.name, f"到医院后医生可能会安排{tests}。")
    parts = [text, visit]
    if d.system == "精神心理":
        parts.append("这种困扰是可以治疗的，主动求助是很好的一步。")
    return fit(parts, 200)


def medication_turn(d: Disease, question: str, style: str = "train") -> str:
    lead = "不建议自己买药随便吃。" if "自己" in question else ""
    urgent = f"这个病要{EMERGENCY_ACTION}，" if d.urgent else ""
    parts = [lead + urgent + (f"{d.name}一般这样治：" if style == "eval" else f"{d.name}的治疗：") + f"{d.treatment}。"]
    if d.drugs:
        tail = "怎么用、用多少必须听医生的。" if style == "eval" else "具体药物和剂量要由医生面诊后决定。"
        parts.append(f"可能用到{join_cn(d.drugs[:2])}等药物，{tail}")
    else:
        parts.append("方案要由医生当面定。" if style == "eval" else "具体方案要由医生面诊后决定。")
    return fit(parts, 200)


def advice_turn(d: Disease, style: str = "train") -> str:
    items = first_items_within(d.advice, 140, sep="；")
    lead, tail = ("平常可以注意这些：", "不舒服要及时回来看。") if style == "eval" else ("日常可以这样做：", "如有不适及时复诊。")
    if d.urgent:
        tail = f"再次出现类似症状时请{EMERGENCY_ACTION}。"
    return fit([f"{lead}{'；'.join(items)}。", tail], 200)


def danger_turn(d: Disease, style: str = "train") -> str:
    shown = first_items_within(d.red_flags, 110)
    flags = join_cn([strip_leading(f, "出现") for f in shown], "或")
    action = flag_action(shown, d.urgent)
    if d.urgent:
        return f"这个病本身就需要尽快处理。如果出现{flags}，请{action}。"
    if style == "eval":
        return f"要留意{flags}，有这些情况请{action}；没有的话按约复查就行。"
    return f"如果出现{flags}，请{action}。其他情况按医生建议按时复诊即可。"


def concrete_finding(d: Disease) -> tuple[str, str] | None:
    """A test whose typical finding reads like a real result (no 'or', no purpose statement)."""
    vague = ("或", "可", "排除", "评估", "用于", "一般", "多", "明确", "筛查", "寻找")
    for test, finding in d.tests:
        if not any(word in finding for word in vague):
            return test, finding
    return None


def result_turns(d: Disease, style: str = "train") -> tuple[str, str] | None:
    found = concrete_finding(d)
    if found is None:
        return None
    test, finding = found
    human = f"检查结果出来了，{test_result(test, finding, '显示')}，这说明什么？"
    where = f"请{URGENT_ADVICE[1:]}" if d.urgent else f"请带着结果到{d.dept}复诊，由医生制定治疗方案。"
    if style == "eval":
        gpt = f"这个结果和{d.name}对得上，加上您的症状，诊断基本可以成立，不过还要医生最后确认。{where}"
    else:
        gpt = f"{test}的结果与{d.name}的表现相符，结合您的症状支持这个诊断，但最终仍需医生综合判断。{where}"
    return human, gpt


def conversation(d: Disease, flow_index: int, rng: random.Random, style: str = "train") -> list[dict]:
    """One dialogue in ShareGPT form; the flow decides which follow-ups the patient asks."""
    complaint = d.complaints[flow_index % len(d.complaints)]
    openers = EVAL_OPENERS if style == "eval" else OPENERS
    turns = [(rng.choice(openers).format(c=complaint), ask_turn(d, rng, style)),
             (d.reply + "。", diagnosis_turn(d, rng, style))]
    for step in FLOWS[flow_index][1:]:
        if step == "result":
            turns.append(result_turns(d, style) or (rng.choice(ADVICE_QUESTIONS), advice_turn(d, style)))
        elif step == "medication":
            question = rng.choice(MED_QUESTIONS)
            turns.append((question, medication_turn(d, question, style)))
        elif step == "advice":
            turns.append((rng.choice(ADVICE_QUESTIONS), advice_turn(d, style)))
        elif step == "danger":
            turns.append((rng.choice(DANGER_QUESTIONS), danger_turn(d, style)))
        elif step == "cause":
            tail = "知道诱因才好预防。" if style == "eval" else "了解诱因有助于预防复发。"
            turns.append((rng.choice(CAUSE_QUESTIONS), fit([f"{d.cause}。", tail], 200)))
    messages = []
    for human, gpt in turns:
        messages += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return messages
