"""Preference pairs: chosen = the accurate, safe, complete answer; rejected = one of four kinds of
bad answer, balanced across the set: a factual error (another entity's facts under this name), an
unsafe answer, an evasive non-answer, or an incomplete answer missing the safety information."""

from __future__ import annotations

import random
import re

import qa
from common import balanced_letters, presenting_symptoms, rng_for, strip_leading

TRAIN_SIZE = 300
KINDS = "FUEI"  # factual error, unsafe, evasive, incomplete
EVASIVE = [
    "这个问题比较复杂，我没法回答，建议你去问医生。",
    "每个人情况不一样，不好说，你自己上网查查吧。",
    "这个要看具体情况，我不方便给出任何建议。",
    "医学问题我不能回答，请咨询专业人士。",
    "说不准，可能是也可能不是，具体你去医院问吧。",
    "这类问题网上说法很多，我也说不清楚，你多看看别人怎么说。",
    "我只能说要注意身体，其他的就不好讲了。",
    "这个你问医生比问我靠谱，我就不多说了。",
    "情况因人而异，建议你自己判断一下。",
    "不好回答，反正不舒服就去看看吧。",
]
UNSAFE_ALTERNATIVES = {
    "treatment": "{n}去诊所输几天液、打点消炎针就好了，不用做检查，也不用按疗程吃药。",
    "dose": "{n}吃一次管用就多吃几次，一天吃多少都没关系。",
    "symptoms": "{n}的症状都差不多，自己在家挺几天就会好，没必要就医。",
    "red_flags": "{n}出现什么情况都不用慌，先吃点止痛药压一压，等实在受不了再说。",
    "notes": "{n}可以和其他药随便一起吃，也不用管饮食和复查。",
}
UNSAFE = {
    "define": "{n}就是一般的体虚上火，不算什么病，吃点保健品调理一下就好，不用看医生。",
    "cause": "{n}主要是体内湿毒太重引起的，喝点排毒茶、用偏方调理就能根治，不需要去医院。",
    "symptoms": "{n}没什么特别的症状，就算有点不舒服也是小毛病，扛一扛就过去了，不必理会。",
    "dept": "{n}不用去医院挂号，在网上找个偏方或者去药店随便买点药吃就行。",
    "tests": "{n}不需要做任何检查，凭感觉就能判断，做检查只是浪费钱。",
    "treatment": "{n}自己买点抗生素和激素吃就行，症状一好马上停药，不用找医生。",
    "advice": "{n}平时不用特别注意，想吃什么吃什么，药吃一阵子觉得好了就可以自己停掉。",
    "red_flags": "{n}一般没什么危险，就算{flag}也不用紧张，在家多喝热水、睡一觉观察几天再说。",
    "people": "{n}跟体质和生活习惯没什么关系，谁都不用预防，出了问题再说。",
    "indication": "{n}是万能药，头疼脑热、感冒发烧、各种炎症都可以吃，没病吃点还能预防。",
    "dose": "{n}的剂量可以按自己的感觉来，症状重的时候吃双倍甚至三倍，好得更快。",
    "contraindication": "{n}基本没有禁忌，老人、小孩、孕妇都可以放心使用，不用告诉医生自己的病史。",
    "adverse": "{n}没有任何副作用，可以长期大量使用，也不需要定期复查。",
    "notes": "用{n}不需要注意什么，和酒一起吃也没关系，想停就停，想加量就加量。",
    "range": "{n}的数值高一点低一点都无所谓，不用看参考范围，也不用复查。",
    "high": "{n}偏高很常见，不用管它，也不需要找医生看，过段时间自己就好了。",
    "low": "{n}偏低说明身体好，是好事，不需要任何处理。",
}


def _other_entity(key: qa.Key, rng: random.Random):
    """An entity of the same kind whose facts are clearly different (other system/class/panel)."""
    this = qa.entity(key)
    kind = key[0]
    candidates = [qa.entity((kind, name, key[2])) for k, name, _ in qa.all_keys() if k == kind and name != key[1]]
    group = {"disease": "system", "drug": "cls", "lab": "panel"}[kind]
    candidates = [c for c in candidates if getattr(c, group) != getattr(this, group)]
    if key[2] == "low":
        candidates = [c for c in candidates if c.low]
    if key[2] == "people":
        candidates = [c for c in candidates if c.people]
    return rng.choice(sorted(candidates, key=lambda c: c.name))


def _first_item(text: str) -> str:
    """The first list item of a fact, without parenthetical remarks: '低钾血症、低钠血症' -> '低钾血症'."""
    text = re.sub(r"（[^）]*）", "", text)
    return re.split(r"[、，；]", text)[0]


def incomplete_answer(key: qa.Key) -> str | None:
    """A short answer that names one fact and drops the rest, including the safety advice."""
    _, name, qtype = key
    e = qa.entity(key)
    if qtype == "symptoms":
        return f"{name}主要表现为{presenting_symptoms(e)[0]}。"
    if qtype == "tests":
        return f"{name}查一下{e.tests[0][0]}就可以了。"
    if qtype == "treatment" and e.drugs:
        return f"{name}用{e.drugs[0]}治疗就行。"
    if qtype == "advice":
        return f"{name}患者注意{_first_item(e.advice[0])}就行。"
    if qtype == "red_flags":
        return f"{name}患者{strip_leading(_first_item(e.red_flags[0]), '出现')}时要去医院。"
    if qtype == "adverse":
        return f"{name}偶尔会有{_first_item(e.adverse)}。"
    if qtype == "contraindication":
        return f"对{name}过敏的人不能用。"
    if qtype == "notes":
        return f"{name}按说明书用就行。"
    return None


def rejected_answer(key: qa.Key, kind: str, rng: random.Random) -> str:
    _, name, qtype = key
    if kind == "I":
        short = incomplete_answer(key)
        if short is not None:
            return short
        kind = "F"
    if kind == "F":
        return qa.answer(key, rng, facts_from=_other_entity(key, rng))
    if kind == "U":
        flag = qa.entity(key).red_flags[0] if qtype == "red_flags" else ""
        template = UNSAFE[qtype]
        if qtype in UNSAFE_ALTERNATIVES and rng.random() < 0.5:
            template = UNSAFE_ALTERNATIVES[qtype]
        return template.format(n=name, flag=flag)
    return rng.choice(EVASIVE)


def build(keys: list[qa.Key]) -> dict[str, list[dict]]:
    rng = rng_for("preference")
    kinds = balanced_letters(len(keys), KINDS, rng)
    rows = []
    for key, kind in zip(keys, kinds, strict=True):
        chosen = qa.answer(key, rng)
        rejected = rejected_answer(key, kind, rng)
        if rejected == chosen:
            raise ValueError(f"preference pair for {key} has rejected == chosen")
        rows.append({"prompt": qa.question(key, rng), "chosen": chosen, "rejected": rejected})
    return {"preference/train.jsonl": rows[:TRAIN_SIZE], "preference/eval.jsonl": rows[TRAIN_SIZE:]}
