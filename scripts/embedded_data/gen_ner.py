"""Clinical-note sentences with entity spans in the CCKS-2019 format (end_pos exclusive).

Sentences are assembled piece by piece; every entity is appended at a known offset and checked
against the final text, so offsets are exact by construction and by assertion.
"""

from __future__ import annotations

import random

from common import is_pediatric, patient_age, patient_sex, rng_for
from facts import DISEASES, PAST_SURGERIES, TEST_KIND
from schema import Disease

RECORDS_PER_DISEASE = 2
EXAMINABLE_SITE_ENDINGS = ("腹", "下肢", "关节", "眼", "耳", "乳房", "胸骨后", "肛门", "腹股沟", "趾间", "肘窝", "躯干",
                           "口腔", "外阴", "扁桃体", "皮肤", "结膜", "鼻腔", "面部", "腰背部", "伸侧", "桡骨远端",
                           "淋巴结", "甲状腺", "前列腺")
CHRONIC_HISTORY = ("原发性高血压", "2型糖尿病", "心房颤动", "甲状腺功能减退症", "慢性阻塞性肺疾病", "痛风",
                   "慢性乙型肝炎", "稳定型心绞痛", "血脂异常", "癫痫")
DENIED = ("原发性高血压", "2型糖尿病", "肺结核", "慢性乙型肝炎", "稳定型心绞痛")
DISEASE_BY_NAME = {d.name: d for d in DISEASES}


class Note:
    """A sentence under construction, with the entities placed in it."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[tuple[int, int, str, str]] = []

    def add(self, text: str) -> None:
        self.text += text

    def ent(self, text: str, label: str) -> None:
        start = len(self.text)
        self.text += text
        self.spans.append((start, start + len(text), label, text))

    def record(self) -> dict:
        for start, end, label, text in self.spans:
            assert self.text[start:end] == text, f"NER offset mismatch for {text!r} ({label}) in {self.text!r}"
        return {"originalText": self.text,
                "entities": [{"start_pos": s, "end_pos": e, "label_type": label} for s, e, label, _ in self.spans]}


def drug_verb(drug: str) -> str:
    if drug.endswith(("乳膏", "软膏", "凝胶", "洗剂", "栓")):
        return "外用"
    if drug.endswith(("滴眼液", "鼻喷雾剂")) or drug in ("布地奈德福莫特罗", "沙丁胺醇", "噻托溴铵"):
        return "规律使用"
    return "口服" if not drug.startswith("口服") else "服用"


def typed_tests(d: Disease, kinds: tuple[str, ...]) -> list[str]:
    return [t for t, _ in d.tests if TEST_KIND[t] in kinds]


def t_admission(n: Note, d: Disease, rng: random.Random, sex: str, age_text: str) -> bool:
    n.add(f"患者{sex}，{age_text}，")
    if d.urgent or "急性" in d.name or is_pediatric(d):
        n.add(rng.choice(["以“", "因“"]))
        n.ent(d.name, "疾病和诊断")
        n.add("”收入我科。")
    else:
        n.add("因“")
        n.ent(d.name, "疾病和诊断")
        n.add(f"{rng.randint(1, 10)}年，加重{rng.randint(2, 14)}天”入院。")
    return True


def t_workup(n: Note, d: Disease, rng: random.Random) -> bool:
    tests = typed_tests(d, ("实验室检验", "影像检查"))
    if not tests:
        return False
    chosen = tests[:2] if len(tests) >= 2 and rng.random() < 0.6 else tests[:1]
    n.add("入院后完善")
    for i, test in enumerate(chosen):
        n.add("、" if i else "")
        n.ent(test, TEST_KIND[test])
    n.add("等" if chosen[-1].endswith(("检查", "检测", "试验", "测定")) else "等检查")
    n.add("，结果支持")
    n.ent(d.name, "疾病和诊断")
    n.add("诊断。")
    return True


def t_imaging_site(n: Note, d: Disease, rng: random.Random) -> bool:
    images = typed_tests(d, ("影像检查",))
    if not (images and d.site and d.drugs):
        return False
    n.ent(images[0], "影像检查")
    n.add("提示")
    n.ent(d.site, "解剖部位")
    n.add("病变，考虑")
    n.ent(d.name, "疾病和诊断")
    n.add("，予")
    n.ent(rng.choice(d.drugs), "药物")
    n.add("治疗。")
    return True


def t_exam_site(n: Note, d: Disease, rng: random.Random) -> bool:
    if not d.site.endswith(EXAMINABLE_SITE_ENDINGS):
        return False
    n.add("专科查体：")
    n.ent(d.site, "解剖部位")
    n.add(rng.choice(["可见阳性体征。", "查体异常，余未见明显异常。"]))
    return True


def t_surgery(n: Note, d: Disease, rng: random.Random) -> bool:
    if not d.surgery:
        return False
    n.add(f"于{rng.randint(2019, 2024)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日行")
    n.ent(d.surgery, "手术")
    n.add("，术程顺利")
    if d.drugs:
        n.add("，术后予")
        n.ent(d.drugs[0], "药物")
        n.add("等治疗。")
    else:
        n.add("，术后恢复良好。")
    return True


def t_history(n: Note, d: Disease, rng: random.Random, sex: str, age: int) -> bool:
    if age < 18:
        return False
    choices = [DISEASE_BY_NAME[name] for name in CHRONIC_HISTORY if name != d.name]
    past = rng.choice([p for p in choices if p.sex in ("", sex) and p.drugs])
    drug = rng.choice(past.drugs)
    n.add("既往")
    n.ent(past.name, "疾病和诊断")
    n.add(f"病史{rng.randint(2, 15)}年，长期{drug_verb(drug)}")
    n.ent(drug, "药物")
    surgeries = [s for s in PAST_SURGERIES if s != "剖宫产术" or sex == "女"]
    if rng.random() < 0.5:
        n.add(f"，{rng.randint(2, 20)}年前行")
        n.ent(rng.choice(surgeries), "手术")
    denied = [name for name in DENIED if name not in (d.name, past.name)]
    n.add("；否认")
    n.ent(rng.choice(denied), "疾病和诊断")
    n.add("病史。")
    return True


def t_lab_followup(n: Note, d: Disease, rng: random.Random) -> bool:
    labs = typed_tests(d, ("实验室检验",))
    if not (labs and d.drugs):
        return False
    n.add("复查")
    n.ent(labs[0], "实验室检验")
    if len(labs) > 1:
        n.add("、")
        n.ent(labs[1], "实验室检验")
    n.add("，结果较前好转，继续")
    n.ent(rng.choice(d.drugs), "药物")
    n.add("治疗。")
    return True


def t_discharge(n: Note, d: Disease, rng: random.Random, sex: str) -> bool:
    second = rng.choice([p for p in DISEASES if p.name != d.name and p.sex in ("", sex) and p.system != d.system
                         and not p.urgent and not is_pediatric(p)])
    n.add("出院诊断：1.")
    n.ent(d.name, "疾病和诊断")
    n.add("；2.")
    n.ent(second.name, "疾病和诊断")
    n.add("。")
    if d.drugs:
        n.add("出院带药：")
        for i, drug in enumerate(d.drugs[:2]):
            n.add("、" if i else "")
            n.ent(drug, "药物")
        n.add("。")
    return True


def note_for(d: Disease, rng: random.Random, variant: int) -> dict:
    """One clinical note: an opening sentence, then two or three further templates that apply."""
    sex = patient_sex(d, rng)
    age, age_text = patient_age(d, rng)
    n = Note()
    t_admission(n, d, rng, sex, age_text) if variant == 0 else t_history(n, d, rng, sex, age)
    # Steps keep the order of a hospital course; a random subset of two is attempted.
    steps = [lambda: t_exam_site(n, d, rng), lambda: t_workup(n, d, rng), lambda: t_imaging_site(n, d, rng),
             lambda: t_surgery(n, d, rng), lambda: t_lab_followup(n, d, rng)]
    wanted = set(rng.sample(range(len(steps)), 3))
    used = 0
    for index, step in enumerate(steps):
        if index in wanted and used < 2 and step():
            used += 1
    if variant == 1 or used == 0:
        t_discharge(n, d, rng, sex)
    return n.record()


def build() -> dict[str, list[dict]]:
    rng = rng_for("ner")
    rows = [note_for(d, rng, variant) for d in DISEASES for variant in range(RECORDS_PER_DISEASE)]
    rng.shuffle(rows)
    return {"eval/ner.jsonl": rows}
