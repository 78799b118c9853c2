"""The hand-written medical fact table, gathered from the fact files and checked once.

Importing this module validates the table, so a typo (a test name with no kind, a key test that
is not among the disease's tests, a duplicate name) stops the build with a message naming it.
"""

from __future__ import annotations

import diseases_cardio_resp
import diseases_digestive
import diseases_endo_renal
import diseases_infect_peds_obgyn
import diseases_neuro_psych
import diseases_ortho_emergency
import diseases_skin_eye_ent
import drugs_a
import drugs_b
import drugs_c
from labs import LABS, PAST_SURGERIES, TEST_KIND
from mcq_handwritten import HANDWRITTEN_MCQ
from scales import CAMI_ITEMS, CAMI_SUBSCALES, MICA_ITEMS, SCALES
from schema import Disease, Drug, Lab

DISEASES: list[Disease] = [
    *diseases_cardio_resp.DISEASES,
    *diseases_digestive.DISEASES,
    *diseases_endo_renal.DISEASES,
    *diseases_neuro_psych.DISEASES,
    *diseases_infect_peds_obgyn.DISEASES,
    *diseases_skin_eye_ent.DISEASES,
    *diseases_ortho_emergency.DISEASES,
]
DRUGS: list[Drug] = [*drugs_a.DRUGS, *drugs_b.DRUGS, *drugs_c.DRUGS]
DRUG_BY_NAME = {drug.name: drug for drug in DRUGS}
LAB_BY_NAME = {lab.name: lab for lab in LABS}

__all__ = [
    "CAMI_ITEMS", "CAMI_SUBSCALES", "DISEASES", "DRUGS", "DRUG_BY_NAME", "HANDWRITTEN_MCQ", "LABS",
    "LAB_BY_NAME", "MICA_ITEMS", "PAST_SURGERIES", "SCALES", "TEST_KIND", "Disease", "Drug", "Lab",
]


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ValueError(f"fact table, {where}: {message}")


def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        _check(name not in seen, f"{what} {name!r}", "appears twice")
        seen.add(name)


def _validate_disease(disease: Disease) -> None:
    where = f"disease {disease.name!r}"
    for field in ("define", "cause", "signs", "treatment", "ask", "reply", "dept", "system"):
        _check(bool(getattr(disease, field)), where, f"{field} is empty")
    _check(len(disease.symptoms) >= 2, where, "needs at least two symptoms")
    _check(len(disease.tests) >= 1, where, "needs at least one test")
    _check(len(disease.red_flags) >= 2, where, "needs at least two red flags")
    _check(len(disease.advice) >= 2, where, "needs at least two pieces of advice")
    _check(len(disease.complaints) == 2, where, f"needs two complaints, got {len(disease.complaints)}")
    for test_name, _ in disease.tests:
        _check(test_name in TEST_KIND, where, f"test {test_name!r} has no kind in labs.TEST_KIND")
    test_names = [name for name, _ in disease.tests]
    _check(not disease.key_test or disease.key_test in test_names, where,
           f"key_test {disease.key_test!r} is not one of its tests {test_names}")
    _check(disease.age[0] <= disease.age[1], where, f"age range {disease.age} is reversed")
    _check(disease.sex in ("", "男", "女"), where, f"sex must be ''/'男'/'女', got {disease.sex!r}")


def validate() -> None:
    """Raise ValueError naming the first inconsistency in the fact table."""
    _check_unique([d.name for d in DISEASES], "disease")
    _check_unique([d.name for d in DRUGS], "drug")
    _check_unique([lab.name for lab in LABS], "lab")
    for disease in DISEASES:
        _validate_disease(disease)
    for drug in DRUGS:
        for field in ("cls", "indication", "dose", "contraindication", "adverse", "notes"):
            _check(bool(getattr(drug, field)), f"drug {drug.name!r}", f"{field} is empty")
    _check(len(CAMI_ITEMS) == 40, "CAMI", f"needs 40 items, got {len(CAMI_ITEMS)}")
    for subscale in CAMI_SUBSCALES:
        rows = [row for row in CAMI_ITEMS if row[0] == subscale]
        _check(len(rows) == 10, f"CAMI {subscale}", f"needs 10 items, got {len(rows)}")
        _check(sum(row[1] for row in rows) == 5, f"CAMI {subscale}", "needs 5 reverse-scored items")
    _check(len(MICA_ITEMS) == 16, "MICA", f"needs 16 items, got {len(MICA_ITEMS)}")
    for row in HANDWRITTEN_MCQ:
        _check(len(set(row[3]) | {row[2]}) == 4, f"MCQ {row[1]!r}", "options are not four distinct strings")


validate()
