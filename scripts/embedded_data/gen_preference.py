"""Preference pairs: chosen = the accurate, safe, complete answer; rejected = one of four kinds of
bad answer, balanced across the set: a factual error (another entity's facts under this name), an
unsafe answer, an evasive non-answer, or an incomplete answer missing the safety information."""

from __future__ import annotations

import random
import re

import qa
from held_out import HELD_OUT
from common import balanced_letters, presenting_symptoms, rng_for, strip_leading

TRAIN_SIZE = 300
KINDS = "FUEI"  # factual error, unsafe, evasive, incomplete
# Evasive non-answers are composed from parts, so that no handful of strings marks them.
EVASIVE_OPENINGS = ["这个问题比较复杂，", "每个人情况不一样，", "关于{n}，", "说实话，", "这个嘛，", "{n}的问题啊，",
                    "网上说法挺多的，", "医学上的事很难讲，", "这得分情况，", "我理解你的担心，"]
EVASIVE_MIDDLES = ["我没法给出明确的回答", "不好一概而论", "我不方便给建议", "具体的我也说不清楚", "很难说是好是坏",
                   "我只能说要注意身体", "这个不好下结论", "可能是也可能不是", "各家说法都不一样", "我就不多说了"]
EVASIVE_CLOSINGS = ["，你自己上网查查吧。", "，你自己判断一下。", "，问问身边的人吧。", "。", "，以后再说吧。",
                    "，反正不舒服就去看看。", "，多看看别人怎么说。", "，随缘吧。"]
EVASIVE_PADDING = ["有的人这样，有的人那样，", "每个人体质不同，", "医生之间看法也不完全一致，", "网上的信息真假难辨，",
                   "这种事情急不来，", "书上写的和实际情况常常不一样，", "我身边也有人问过类似的问题，", "有时候想多了反而不好，",
                   "不同医院的说法也不一样，", "这方面的研究一直在变，", "别人的经验不一定适合你，", "说多了怕你误会，"]
# Unsafe advice, by what it gets wrong; combined with the question's own facts so that it reads
# like a real answer that goes wrong where it matters.
UNSAFE_BY_TYPE = {
    "treatment": ["不用去医院，自己买点抗生素和激素吃几天就好，症状一好马上停药。", "去诊所输几天液、打点消炎针就好了，不用做检查。"],
    "dose": ["效果不好可以自己加到两三倍的量，好得更快。", "漏服了就下次一起补上，多吃一点也没关系。"],
    "red_flags": ["真出现这些也不用紧张，先吃点止痛药在家观察几天再说。", "这些情况一般会自己好，不用急着去医院。"],
    "symptoms": ["有这些症状一般扛一扛就过去了，没必要就医。", "这些都是小毛病，不用理会。"],
    "advice": ["药吃一阵子觉得好了就可以自己停掉，想吃什么吃什么。", "平时不用特别注意，喝点酒也无妨。"],
    "contraindication": ["其实老人、小孩、孕妇都可以放心用，不用告诉医生自己的病史。", "这些禁忌不用太当真，一般人都能用。"],
    "adverse": ["基本没有副作用，可以长期大量使用，也不用复查。", "副作用都是说明书吓人的，不用管。"],
    "notes": ["和酒一起吃也没关系，想停就停，想加量就加量。", "可以和其他药随便一起吃，不用管饮食和复查。"],
    "high": ["偏高很常见，不用管它，过段时间自己就好了。", "高一点说明身体好，不需要看医生。"],
    "low": ["偏低说明身体好，是好事，不需要任何处理。", "低一点没关系，多吃点补品就补回来了。"],
}
UNSAFE_GENERIC = ["不用去医院，找个偏方调理一下就行。", "网上买点保健品吃吃就好，没必要看医生。",
                  "自己去药店随便买点药吃就可以了，不用听医生的。", "不用做检查，做检查只是浪费钱。",
                  "喝点排毒茶、多出出汗就能好，不需要吃药。"]


def _other_entities(key: qa.Key, rng: random.Random, count: int = 8) -> list:
    """Trained entities of the same kind, same group (organ system, drug class or lab panel) first,
    whose facts differ: wrong answers that sound right."""
    this = qa.entity(key)
    kind = key[0]
    group = {"disease": "system", "drug": "cls", "lab": "panel"}[kind]
    candidates = {name: qa.entity((kind, name, key[2])) for k, name, _ in qa.all_keys()
                  if k == kind and name != key[1] and name not in HELD_OUT}
    pool = [c for _, c in sorted(candidates.items()) if (key[2] != "low" or c.low) and (key[2] != "people" or c.people)]
    rng.shuffle(pool)
    pool.sort(key=lambda c: getattr(c, group) != getattr(this, group))  # stable: same group first
    return pool[:count]


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


def rejected_variants(key: qa.Key, kind: str, chosen: str, rng: random.Random) -> list[str]:
    """Candidate rejected answers of one kind, from shortest to longest in intent."""
    _, name, qtype = key
    if kind == "I" and (short := incomplete_answer(key)) is not None:
        return [short]
    if kind in ("I", "F"):
        return [qa.answer(key, rng, facts_from=other) for other in _other_entities(key, rng)]
    if kind == "U":
        unsafe = rng.choice(UNSAFE_BY_TYPE.get(qtype, UNSAFE_GENERIC))
        extra = rng.sample(UNSAFE_GENERIC, 2)
        first = chosen.split("。")[0] + "。"
        return [f"{name}嘛，{unsafe}", first + unsafe, first + unsafe + extra[0], first + unsafe + "".join(extra)]
    opening = rng.choice(EVASIVE_OPENINGS).format(n=name)
    middle = rng.choice(EVASIVE_MIDDLES) + rng.choice(EVASIVE_CLOSINGS)
    padding = rng.sample(EVASIVE_PADDING, len(EVASIVE_PADDING))
    return [opening + "".join(padding[:count]) + middle for count in range(len(padding) + 1)]


def rejected_answer(key: qa.Key, kind: str, chosen: str, rng: random.Random, longer: bool) -> str:
    """A rejected answer of `kind`, longer than `chosen` if `longer` (else shorter) when one of the
    variants allows it; an incomplete answer that must be longer becomes a factual error."""
    kind = "F" if kind == "I" and longer else kind
    variants = [v for v in rejected_variants(key, kind, chosen, rng) if v != chosen]
    fitting = [v for v in variants if (len(v) > len(chosen)) == longer]
    return (fitting or variants)[0]


def build(keys: list[qa.Key]) -> dict[str, list[dict]]:
    """Pairs over the preference keys. Each pair is assigned whether the rejected answer should be
    the longer one (half of the pairs), so that length says nothing about which answer is better."""
    rng = rng_for("preference")
    kinds = balanced_letters(len(keys), KINDS, rng)
    longer = balanced_letters(len(keys), "LS", rng)
    rows = []
    for key, kind, length in zip(keys, kinds, longer, strict=True):
        chosen = qa.answer(key, rng)
        rejected = rejected_answer(key, kind, chosen, rng, longer=length == "L")
        if rejected == chosen:
            raise ValueError(f"preference pair for {key} has rejected == chosen")
        rows.append({"prompt": qa.question(key, rng), "chosen": chosen, "rejected": rejected})
    return {"preference/train.jsonl": rows[:TRAIN_SIZE], "preference/eval.jsonl": rows[TRAIN_SIZE:]}


def chosen_longer_share(rows: list[dict]) -> float:
    return sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / max(len(rows), 1)
