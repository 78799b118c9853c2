"""Pretraining passages in several registers: encyclopedia entries, textbook sections, review
abstracts, patient-education Q&A, case reports, drug monographs, lab-test explainers, symptom
overviews, department overviews and differential-diagnosis notes."""

from __future__ import annotations

import random

from common import (
    EMERGENCY_ACTION,
    evolution,
    flag_action,
    join_cn,
    onset,
    patient_signs,
    result_clause,
    test_result,
    tests_phrase,
    patient_age,
    patient_sex,
    pregnancy_note,
    presenting_symptoms,
    rng_for,
    sentence,
    short_define,
    strip_leading,
    system_label,
)
from held_out import TRAIN_DISEASES as DISEASES
from held_out import TRAIN_DRUGS as DRUGS
from held_out import TRAIN_LABS as LABS
from qa import symptom_sentence
from schema import Disease, Drug, Lab

EVAL_SHARE = 0.07
KEY_SYMPTOMS = ("发热", "咳嗽", "头痛", "腹痛", "腹泻", "呕吐", "胸痛", "呼吸困难", "乏力", "水肿", "皮疹",
                "瘙痒", "头晕", "心悸", "关节", "视力", "尿频", "体重下降", "睡眠", "黄染", "抽搐", "意识")
HEADINGS = (
    ("【概述】", "【病因】", "【临床表现】", "【辅助检查】", "【治疗】", "【预防与调护】", "【就医提示】"),
    ("一、概述", "二、病因", "三、临床表现", "四、辅助检查", "五、治疗", "六、预防与调护", "七、何时就医"),
    ("■ 概述", "■ 病因与诱因", "■ 症状与体征", "■ 检查", "■ 治疗原则", "■ 日常管理", "■ 警示信号"),
)


def diagnosis_hint(d: Disease) -> str:
    if d.key_test:
        return f"{d.key_test}有助于明确诊断"
    return f"诊断主要依据临床表现，必要时辅以{tests_phrase([d.tests[0][0]])}"


def tests_text(d: Disease, sep: str = "；") -> str:
    return sep.join(test_result(t, f, "示" if i % 2 == 0 else "可见") for i, (t, f) in enumerate(d.tests))


def drugs_text(d: Disease) -> str:
    return f"常用药物包括{join_cn(d.drugs)}等，应在医生指导下使用。" if d.drugs else ""


def flags_text(d: Disease) -> str:
    return join_cn([strip_leading(f, "出现") for f in d.red_flags], "或")


def flags_action(d: Disease) -> str:
    return flag_action(d.red_flags, d.urgent)


def similar(d: Disease) -> list[Disease]:
    """Diseases of the same organ system that share a key symptom with d."""
    mine = {k for k in KEY_SYMPTOMS if any(k in s for s in presenting_symptoms(d))}
    return [p for p in DISEASES if p.system == d.system and p.name != d.name
            and mine & {k for k in KEY_SYMPTOMS if any(k in s for s in presenting_symptoms(p))}]


def encyclopedia(d: Disease, rng: random.Random) -> str:
    h = rng.choice(HEADINGS)
    people = f"易患人群：{d.people}。" if d.people else ""
    return "\n".join([
        d.name, f"{h[0]}\n{d.name}是{d.define}。{people}主要就诊科室为{d.dept}。",
        f"{h[1]}\n{sentence(d.cause)}", f"{h[2]}\n{symptom_sentence(d, d.name, 200)}体征：{sentence(d.signs)}",
        f"{h[3]}\n{sentence(tests_text(d))}", f"{h[4]}\n{sentence(d.treatment)}{drugs_text(d)}",
        f"{h[5]}\n{sentence('；'.join(d.advice))}",
        f"{h[6]}\n出现{flags_text(d)}时，应{flags_action(d)}。",
    ])


def textbook(d: Disease, rng: random.Random, number: int) -> str:
    peers = [p.name for p in similar(d)]
    rng.shuffle(peers)
    shown = presenting_symptoms(d)
    differential = f"本病需与{join_cn(peers[:3])}等相鉴别。" if peers else ""
    return "\n".join([
        f"第{number}节　{d.name}",
        f"{d.name}是常见的{system_label(d)}之一。从定义上看，它是{d.define}。",
        f"【病因与发病机制】{sentence(d.cause)}",
        f"【临床表现】典型症状包括{join_cn(d.symptoms)}。体格检查方面，{sentence(d.signs)}",
        f"【诊断】根据{join_cn(shown[:3])}等临床表现，{diagnosis_hint(d)}。"
        f"{differential}",
        f"【治疗】{sentence(d.treatment)}{drugs_text(d)}",
        f"【预后与随访】患者教育是治疗的重要组成部分：{sentence('；'.join(d.advice))}"
        f"若出现{flags_text(d)}，提示病情变化，应{flags_action(d)}。",
    ])


def review_abstract(d: Disease, rng: random.Random) -> str:
    key = d.key_test or d.tests[0][0]
    first_drug = d.drugs[0] if d.drugs else "综合治疗"
    title = rng.choice([f"{d.name}的诊治进展", f"{d.name}临床诊疗要点综述", f"{d.name}的规范化管理"])
    return "\n".join([
        title,
        f"摘要：{d.name}是临床常见的{system_label(d)}，{d.define}。其发生与多种因素相关：{d.cause}。"
        f"临床上以{join_cn(presenting_symptoms(d)[:3])}为主要表现，{diagnosis_hint(d)}。"
        f"治疗方面，{d.treatment}。本文围绕{d.name}的病因、临床特点、诊断方法及治疗策略进行综述，"
        f"强调早期识别{flags_text(d)}等危险信号的重要性，以期为临床实践提供参考。",
        f"关键词：{d.name}；{system_label(d)}；{key}；{first_drug}",
    ])


def patient_education(d: Disease, rng: random.Random) -> str:
    lines = [f"健康科普｜{d.name}", f"问：什么是{d.name}？", f"答：{d.name}是{d.define}。"]
    if d.people:
        lines += ["问：哪些人容易得？", f"答：{sentence(d.people)}"]
    lines += [
        "问：会有哪些表现？", f"答：{symptom_sentence(d, d.name, 200)}",
        "问：需要做哪些检查？", f"答：医生可能会安排{tests_phrase([t for t, _ in d.tests])}。",
        "问：怎么治疗？", f"答：{sentence(d.treatment)}请不要自行用药。",
        "问：日常要注意什么？", f"答：{sentence('；'.join(d.advice))}",
        "问：什么时候必须去医院？", f"答：出现{flags_text(d)}时，应{flags_action(d)}。",
    ]
    return "\n".join(lines)


def case_report(d: Disease, rng: random.Random) -> str:
    """One patient: onset and course fit the disease (an infarct presents within hours, a chronic
    disease after months), the examination states findings, the tests state results."""
    sex = patient_sex(d, rng)
    _, age_text = patient_age(d, rng)
    since = onset(d, rng)
    shown = presenting_symptoms(d)
    hedges = ("或", "可有", "可见", "多无", "多为", "者", "一般", "早期")
    results = [f"{t}：{clause}" for t, f in d.tests
               if (clause := result_clause(f)) and not any(h in clause for h in hedges)]
    tests = "；".join(results) if results else f"{d.tests[0][0]}结果符合本病表现"
    urgent = f"患者经急诊绿色通道入院，{d.treatment.split('；')[0]}。" if d.urgent else ""
    return "\n".join([
        f"病例报告：{d.name}一例",
        f"患者，{sex}，{age_text}。{pregnancy_note(d, rng)}因{join_cn(shown[:2])}{since}就诊。",
        f"现病史：患者{since}前出现{join_cn(shown[:3])}，{evolution(d, rng)}。",
        f"查体：{sentence(patient_signs(d))}",
        f"辅助检查：{sentence(tests)}",
        f"诊断：{d.name}。",
        f"治疗经过：{urgent or sentence(d.treatment)}经规范治疗后症状缓解，嘱其{sentence(d.advice[0])}",
        f"讨论：{d.name}是{d.define}。本例提示，临床遇到{join_cn(shown[:2])}的患者应考虑本病，"
        f"并告知患者如出现{strip_leading(d.red_flags[0], '出现')}应{flag_action([d.red_flags[0]], d.urgent)}。",
    ])


def drug_monograph(g: Drug, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "\n".join([
            g.name, f"【药理分类】{g.cls}", f"【适应症】{g.indication}。", f"【用法用量】{g.dose}。",
            f"【禁忌】{g.contraindication}。", f"【不良反应】{g.adverse}。", f"【注意事项】{g.notes}。",
            "【提示】本品须在医生或药师指导下使用，具体用法以说明书和医嘱为准。",
        ])
    hallmark = f"其中最具特征、需重点关注的是{g.hallmark}。" if g.hallmark and g.hallmark not in g.adverse else ""
    return (f"{g.name}是一种{g.cls}，临床主要用于{g.indication}。常规用法为：{g.dose}。"
            f"以下情况不宜使用：{g.contraindication}。常见不良反应有{g.adverse}，{hallmark}"
            f"用药注意：{g.notes}。")


def lab_explainer(lab: Lab, rng: random.Random) -> str:
    low = f"降低常见于{lab.low}。" if lab.low else "降低一般无重要临床意义。"
    return (f"{lab.name}（{lab.abbr}）是{lab.panel}中的常用检测项目。成人参考范围一般为{lab.range_text}。"
            f"升高常见于{lab.high}；{low}化验结果需结合临床表现综合分析，并以本实验室标注的参考范围为准。")


def symptom_overview(symptom: str) -> str | None:
    found = [d for d in DISEASES if any(symptom in s for s in presenting_symptoms(d))]
    if len(found) < 3:
        return None
    lines = [f"{symptom}的常见病因", f"{symptom}可见于多种疾病，以下按科室列举常见病因："]
    for d in found:
        related = [s for s in presenting_symptoms(d) if symptom not in s][:2]
        extra = f"，常伴{join_cn(related)}" if related else ""
        lines.append(f"{d.name}（{d.dept}）：{short_define(d)}{extra}。")
    lines.append(f"出现{symptom}时应结合伴随症状判断，伴有意识改变、呼吸困难或持续加重者应{EMERGENCY_ACTION}。")
    return "\n".join(lines)


def department_overview(dept: str) -> str:
    found = [d for d in DISEASES if d.dept == dept]
    lines = [f"{dept}常见疾病简介"]
    lines += [f"{d.name}：{short_define(d)}。典型表现为{join_cn(presenting_symptoms(d)[:3])}。" for d in found]
    return "\n".join(lines)


def differential(a: Disease, b: Disease) -> str:
    return (f"{a.name}与{b.name}的鉴别\n两者同属{system_label(a)}，症状有相似之处。"
            f"{a.name}以{join_cn(presenting_symptoms(a)[:3])}为主要表现，"
            f"{diagnosis_hint(a)}；{b.name}则以{join_cn(presenting_symptoms(b)[:3])}为主要表现，"
            f"{diagnosis_hint(b)}。病因方面，前者{a.cause.split('；')[0]}，"
            f"后者{b.cause.split('；')[0]}。临床上应结合病史、体征和检查结果综合判断。")


def passages(rng: random.Random) -> list[str]:
    out: list[str] = []
    for number, d in enumerate(DISEASES, start=1):
        out += [encyclopedia(d, rng), textbook(d, rng, number), review_abstract(d, rng),
                patient_education(d, rng), case_report(d, rng)]
    out += [drug_monograph(g, rng) for g in DRUGS]
    out += [lab_explainer(lab, rng) for lab in LABS]
    out += [text for s in KEY_SYMPTOMS if (text := symptom_overview(s))]
    out += [department_overview(dept) for dept in sorted({d.dept for d in DISEASES})]
    pairs = {tuple(sorted((a.name, b.name))): (a, b) for a in DISEASES for b in similar(a)[:2]}
    out += [differential(a, b) for a, b in pairs.values()]
    return out


def build() -> dict[str, list[dict]]:
    rng = rng_for("pretrain")
    texts = passages(rng)
    rng.shuffle(texts)
    cut = round(len(texts) * EVAL_SHARE)
    return {
        "pretrain/eval.jsonl": [{"text": t} for t in texts[:cut]],
        "pretrain/train.jsonl": [{"text": t} for t in texts[cut:]],
    }
