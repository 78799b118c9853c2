"""Question makers for the multiple-choice benchmarks. Each returns a plain item
{subject, question, correct, wrong: [...], explanation}; letters are assigned later.

Wrong options come from the same system and class as the answer, so that an item tests knowledge,
not elimination: diagnoses of the same organ system (a stroke vignette offers other neurological
diseases), the key tests of same-system diseases, departments of the same kind (internal medicine
for an internal-medicine answer), milder symptoms of same-system diseases against a red flag, and
reference ranges of the same panel. Each stays clearly wrong for this item (never the disease's own
department, tests or red flags).
"""

from __future__ import annotations

import random

from common import (
    join_cn,
    onset,
    patient_age,
    patient_sex,
    pregnancy_note,
    presenting_symptoms,
    result_clause,
    is_emergency_flag,
    patient_signs,
    strip_leading,
    system_label,
)
from facts import DISEASES, DRUGS, LABS
from schema import Disease, Drug, Lab

KEY_SYMPTOMS = ("热", "咳", "腹", "头痛", "胸", "腰", "背", "咽", "耳", "眼", "视", "泻", "吐", "呼吸", "喘",
                "气短", "气急", "乏力", "肿", "疹", "痒", "晕", "心悸", "关节", "尿", "体重", "睡", "黄", "抽搐",
                "意识", "出血", "便血", "咯血", "皮")
DEPT_GROUPS = (
    {"呼吸内科", "感染科", "结核科"},
    {"消化内科", "普通外科", "肛肠科", "感染科", "肝胆外科", "胃肠外科", "肝病科"},
    {"肾内科", "泌尿外科"},
    {"神经内科", "神经外科", "精神科", "心理科", "临床心理科", "睡眠医学科", "眩晕门诊", "记忆门诊", "老年科"},
    {"心血管内科", "血管外科"},
    {"内分泌科", "风湿免疫科", "骨科"},
    {"骨科", "康复医学科", "运动医学科", "脊柱外科", "疼痛科", "手外科"},
    {"皮肤科", "变态反应科"},
    {"耳鼻咽喉科", "变态反应科"},
    {"妇产科", "妇科", "产科", "生殖医学科", "乳腺外科"},
    {"儿科", "新生儿科"},
)
DISTRACTOR_DEPTS = ("呼吸内科", "心血管内科", "消化内科", "内分泌科", "肾内科", "神经内科", "精神科", "感染科",
                    "普通外科", "骨科", "泌尿外科", "风湿免疫科", "血液科", "妇产科", "皮肤科", "眼科",
                    "耳鼻咽喉科", "口腔科", "血管外科", "乳腺外科")
BENIGN = ("偶尔感到轻微疲倦，休息后即可缓解", "食欲稍有下降，但进食基本正常", "夜间睡眠稍浅，白天精神尚可",
          "天气变化时有轻微不适", "活动后轻度肌肉酸胀，次日自行缓解", "早晨起床时轻微口干，饮水后缓解",
          "进食后偶有轻微饱胀感", "工作忙碌时情绪偶有波动")


def item(subject: str, question: str, correct: str, wrong: list[str], explanation: str) -> dict:
    options = [correct, *wrong]
    if len(set(options)) != len(options):
        raise ValueError(f"MCQ {question!r}: options are not distinct: {options}")
    return {"subject": subject, "question": question, "correct": correct, "wrong": wrong, "explanation": explanation}


def keywords(texts: tuple[str, ...] | list[str]) -> set[str]:
    return {k for k in KEY_SYMPTOMS if any(k in t for t in texts)}


def excluded_depts(d: Disease) -> set[str]:
    named = {d.dept, *d.alt_depts}
    out = set(named)
    for group in DEPT_GROUPS:
        if group & named:
            out |= group
    return out


def dept_item(d: Disease, rng: random.Random) -> dict | None:
    if d.dept == "急诊科":
        return None
    pool = [dept for dept in DISTRACTOR_DEPTS if dept not in excluded_depts(d)]
    kind = d.dept[-2:]  # 内科 / 外科 / 皮肤科...: departments of the same kind first
    rng.shuffle(pool)
    pool.sort(key=lambda dept: dept[-2:] != kind)
    stem = rng.choice(["患者被诊断为{n}，最适合就诊的科室是", "{n}患者首选就诊的科室是",
                       "下列科室中，{n}通常在哪个科室诊治"])
    return item("clinical_medicine", stem.format(n=d.name), d.dept, pool[:3],
                f"{d.name}属于{system_label(d)}，一般由{d.dept}诊治。")


def vignette_eligible(d: Disease) -> bool:
    return len(presenting_symptoms(d)) >= 2


def vignette(d: Disease, rng: random.Random) -> tuple[str, str, int]:
    """A short case description (without the disease name), the patient's sex and age."""
    sex = patient_sex(d, rng)
    age, age_text = patient_age(d, rng)
    shown = presenting_symptoms(d)
    history = f"患者，{sex}，{age_text}。{pregnancy_note(d, rng)}{onset(d, rng)}来出现{join_cn(shown[:3])}。"
    parts = [history, f"查体：{patient_signs(d)}。"]
    ordered = sorted(d.tests, key=lambda pair: pair[0] != d.key_test)  # the key test first
    results = [(t, clause) for t, f in ordered if (clause := result_clause(f))]
    if results:
        parts.append(f"{results[0][0]}：{results[0][1]}。")
    text = "".join(part for part in parts if d.name not in part)
    return text, sex, age


def distractor_diseases(d: Disease, sex: str, age: int, count: int, rng: random.Random) -> list[Disease]:
    """Same-system diseases a patient of this sex and age could have, then (if the system is small)
    diseases of other systems that share a key symptom: differentials, not giveaways."""
    fits = [p for p in DISEASES if p.name != d.name and p.sex in ("", sex) and p.age[0] - 10 <= age <= p.age[1] + 10]
    same = sorted((p for p in fits if p.system == d.system), key=lambda p: p.name)
    mine = keywords(presenting_symptoms(d))
    near = sorted((p for p in fits if p.system != d.system and mine & keywords(presenting_symptoms(p))), key=lambda p: p.name)
    rest = sorted((p for p in fits if p not in same and p not in near), key=lambda p: p.name)
    rng.shuffle(same)
    rng.shuffle(near)
    rng.shuffle(rest)
    return (same + near + rest)[:count]


def diagnosis_item(d: Disease, rng: random.Random, n_wrong: int, subject: str = "clinical_medicine") -> dict:
    text, sex, age = vignette(d, rng)
    wrong = [p.name for p in distractor_diseases(d, sex, age, n_wrong, rng)]
    stem = rng.choice(["最可能的诊断是", "该患者最可能的诊断是", "首先考虑的诊断是"])
    shown = join_cn(presenting_symptoms(d)[:3])
    return item(subject, text + stem, d.name, wrong, f"{shown}等表现结合查体和检查所见，符合{d.name}的特点。")


def key_test_item(d: Disease, rng: random.Random, n_wrong: int, with_vignette: bool = False) -> dict:
    own = {t for t, _ in d.tests}
    tests = {p.key_test: p.system == d.system for p in DISEASES if p.key_test and p.key_test not in own}
    same, other = sorted(t for t, s in tests.items() if s), sorted(t for t, s in tests.items() if not s)
    rng.shuffle(same)
    rng.shuffle(other)
    if with_vignette:
        text, _, _ = vignette(d, rng)
        text = text[:text.index("查体：")]  # keep history only: a test result would give the answer away
        question = f"{text}为明确诊断，首选的检查是"
    else:
        question = rng.choice([f"对{d.name}诊断最有价值的检查是", f"确诊{d.name}首选的检查是"])
    finding = dict(d.tests)[d.key_test]
    return item("clinical_medicine", question, d.key_test, (same + other)[:n_wrong],
                f"{d.key_test}是诊断{d.name}最有价值的检查，典型所见为{finding}。")


def lab_item(lab: Lab, rng: random.Random) -> dict | None:
    if not any(ch.isdigit() for ch in lab.range_text):
        return None
    others = [o for o in LABS if o.name != lab.name and any(ch.isdigit() for ch in o.range_text)]
    same_panel = [o for o in others if o.panel == lab.panel]
    pool = same_panel if len(same_panel) >= 3 else others
    wrong = rng.sample(pool, 3)
    explanation = f"{lab.name}（{lab.abbr}）的成人参考范围一般为{lab.range_text}。"
    if rng.random() < 0.5:
        return item("basic_medicine", f"{lab.name}（{lab.abbr}）的成人参考范围是", lab.range_text,
                    [o.range_text for o in wrong], explanation)
    return item("basic_medicine", f"成人参考范围为“{lab.range_text}”的检验项目是", lab.name,
                [o.name for o in wrong], explanation)


def class_item(g: Drug, rng: random.Random) -> dict:
    classes = sorted({o.cls for o in DRUGS if o.cls != g.cls and o.cls not in g.cls and g.cls not in o.cls})
    stem = rng.choice(["{n}属于下列哪一类药物", "按药理作用分类，{n}属于", "{n}的药理分类是"])
    return item("pharmacology", stem.format(n=g.name), g.cls, rng.sample(classes, 3),
                f"{g.name}属于{g.cls}，主要用于{g.indication}。")


def _hallmark_tokens(text: str) -> list[str]:
    for sep in "，、和及（）":
        text = text.replace(sep, "|")
    return [t for t in text.split("|") if len(t) >= 2]


def hallmark_item(g: Drug, rng: random.Random) -> dict:
    own = g.adverse + g.notes + g.hallmark + g.contraindication
    pool = sorted({o.hallmark for o in DRUGS if o.hallmark and o.name != g.name
                   and not any(t in own for t in _hallmark_tokens(o.hallmark))})
    stem = rng.choice(["{n}最具特征性、需要重点警惕的不良反应是", "使用{n}时尤其需要警惕的不良反应是"])
    return item("pharmacology", stem.format(n=g.name), g.hallmark, rng.sample(pool, 3),
                f"{g.name}常见不良反应有{g.adverse}，其中最具特征的是{g.hallmark}。")


MILD_EXCLUDE = ("高热", "剧烈", "持续", "突发", "血", "无力", "意识", "昏迷", "抽搐", "晕厥", "呼吸困难", "胸", "压榨", "黄染")


def mild_symptoms(d: Disease) -> list[str]:
    """Everyday symptoms of other diseases of d's system: plausible, but not danger signs."""
    own = "".join(d.red_flags)
    found = {s for p in DISEASES if p.system == d.system and p.name != d.name for s in presenting_symptoms(p)
             if not is_emergency_flag(s) and not any(w in s for w in MILD_EXCLUDE) and s not in own and len(s) >= 3}
    return sorted(found)


def red_flag_item(d: Disease, rng: random.Random) -> dict:
    flag = strip_leading(rng.choice(d.red_flags), "出现")
    pool = mild_symptoms(d)
    rng.shuffle(pool)
    wrong = (pool + rng.sample(BENIGN, 3))[:3]
    stem = rng.choice(["{n}患者出现下列哪种情况时最需要立即就医", "下列哪项是{n}患者需要立即就医的危险信号"])
    return item("physician", stem.format(n=d.name), flag, wrong,
                f"{d.name}患者出现{flag}提示病情可能加重或出现并发症，需要立即处理；其余多为本系统疾病的一般症状。")


def treatment_drug_item(d: Disease, rng: random.Random) -> dict | None:
    """Practice only: a drug used for d against drugs of other systems' diseases."""
    if not d.drugs:
        return None
    pool = sorted({g for p in DISEASES if p.system != d.system for g in p.drugs} - set(d.drugs))
    stem = rng.choice(["治疗{n}常用的药物是", "下列药物中，可用于治疗{n}的是"])
    correct = rng.choice(d.drugs)
    return item("pharmacology", stem.format(n=d.name), correct, rng.sample(pool, 3),
                f"{correct}是治疗{d.name}的常用药物之一。")


def symptom_item(d: Disease, rng: random.Random) -> dict | None:
    """Practice only: a typical symptom of d against symptoms of other systems' diseases."""
    shown = presenting_symptoms(d)
    if not shown:
        return None
    mine = keywords(shown)
    pool = sorted({s for p in DISEASES if p.system != d.system for s in presenting_symptoms(p)
                   if not (keywords([s]) & mine)})
    correct = shown[0]
    return item("clinical_medicine", rng.choice(["{n}的典型表现是", "下列哪项是{n}的常见症状"]).format(n=d.name),
                correct, rng.sample(pool, 3), f"{d.name}的常见表现有{join_cn(shown[:3])}等。")
