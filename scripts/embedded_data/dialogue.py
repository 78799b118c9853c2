"""Multi-turn doctor-patient dialogues: the patient describes symptoms, the doctor asks follow-up
questions, then gives a possible diagnosis, tests, treatment, self-care or warning signs.

Each disease yields FLOWS variants that differ in which follow-ups the patient asks and in which of
the two hand-written complaints opens the conversation.
"""

from __future__ import annotations

import random

from common import URGENT_ADVICE, first_items_within, fit, join_cn, strip_leading
from schema import Disease

OPENERS = ["医生您好，{c}。", "{c}，这是怎么回事？", "大夫，{c}，需要去医院吗？", "您好，想咨询一下：{c}。",
           "{c}，有点担心，该怎么办？", "{c}。请问这是什么问题？"]
ASK_LEADS = ["了解了。为了更好地判断，想再问几个问题：", "别着急，我先了解一下情况：", "好的，请再补充一些信息：",
             "明白了。还需要确认几点："]
DIAGNOSIS_LEADS = ["结合您说的情况，", "根据您描述的症状，", "从这些表现来看，"]
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


def ask_turn(d: Disease, rng: random.Random) -> str:
    if d.urgent:
        return f"这种情况可能比较紧急。{d.ask}如果症状正在加重，请不要等待，立即拨打120。"
    return rng.choice(ASK_LEADS) + d.ask


def diagnosis_turn(d: Disease, rng: random.Random) -> str:
    lead = rng.choice(DIAGNOSIS_LEADS)
    text = f"{lead}考虑{d.name}的可能性比较大，但还需要医生面诊和检查才能确诊。"
    tests = join_cn([t for t, _ in d.tests[:2]])
    if d.urgent:
        return text + URGENT_ADVICE + FIRST_AID.get(d.name, f"到医院后医生可能会安排{tests}等检查。")
    parts = [text, f"建议到{d.dept}就诊，可能需要做{tests}等检查。"]
    if d.system == "精神心理":
        parts.append("这种困扰是可以治疗的，主动求助是很好的一步。")
    return fit(parts, 200)


def medication_turn(d: Disease, question: str) -> str:
    lead = "不建议自己买药随便吃。" if "自己" in question else ""
    parts = [lead + f"{d.name}的治疗：{d.treatment}。"]
    if d.drugs:
        parts.append(f"可能用到{join_cn(d.drugs[:2])}等药物，具体药物和剂量要由医生面诊后决定。")
    else:
        parts.append("具体方案要由医生面诊后决定。")
    return fit(parts, 200)


def advice_turn(d: Disease) -> str:
    items = first_items_within(d.advice, 140, sep="；")
    return fit([f"日常可以这样做：{'；'.join(items)}。", "如有不适及时复诊。"], 200)


def danger_turn(d: Disease) -> str:
    flags = join_cn([strip_leading(f, "出现") for f in first_items_within(d.red_flags, 110)], "或")
    if d.urgent:
        return f"这个病本身就需要尽快就医。如果出现{flags}，请立即拨打120。"
    return f"如果出现{flags}，请尽快就医，必要时拨打120。其他情况按医生建议按时复诊即可。"


def concrete_finding(d: Disease) -> tuple[str, str] | None:
    """A test whose typical finding reads like a real result (no 'or', no purpose statement)."""
    vague = ("或", "可", "排除", "评估", "用于", "一般", "多", "明确", "筛查", "寻找")
    for test, finding in d.tests:
        if not any(word in finding for word in vague):
            return test, finding
    return None


def result_turns(d: Disease) -> tuple[str, str] | None:
    found = concrete_finding(d)
    if found is None:
        return None
    test, finding = found
    human = f"检查结果出来了，{test}显示{finding}，这说明什么？"
    gpt = (f"{test}提示{finding}，这与{d.name}的表现相符，结合您的症状支持这个诊断，"
           f"但最终仍需医生综合判断。请带着结果到{d.dept}复诊，由医生制定治疗方案。")
    return human, gpt


def conversation(d: Disease, flow_index: int, rng: random.Random) -> list[dict]:
    """One dialogue in ShareGPT form; the flow decides which follow-ups the patient asks."""
    complaint = d.complaints[flow_index % len(d.complaints)]
    turns = [(rng.choice(OPENERS).format(c=complaint), ask_turn(d, rng)),
             (d.reply + "。", diagnosis_turn(d, rng))]
    for step in FLOWS[flow_index][1:]:
        if step == "result":
            turns.append(result_turns(d) or (rng.choice(ADVICE_QUESTIONS), advice_turn(d)))
        elif step == "medication":
            question = rng.choice(MED_QUESTIONS)
            turns.append((question, medication_turn(d, question)))
        elif step == "advice":
            turns.append((rng.choice(ADVICE_QUESTIONS), advice_turn(d)))
        elif step == "danger":
            turns.append((rng.choice(DANGER_QUESTIONS), danger_turn(d)))
        elif step == "cause":
            turns.append((rng.choice(CAUSE_QUESTIONS), fit([f"{d.cause}。", "了解诱因有助于预防复发。"], 200)))
    messages = []
    for human, gpt in turns:
        messages += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return messages
