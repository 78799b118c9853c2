"""Record types of the hand-written medical fact table, and compact constructors for them.

The fact files write lists as delimited strings ("发热、咳嗽") so that one disease fits on a
screen; the constructors here split them once, so generators only ever see tuples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Disease:
    name: str
    dept: str  # the outpatient department a patient would register with
    system: str  # organ system; distractors for MCQs are drawn from other systems
    define: str
    cause: str
    symptoms: tuple[str, ...]
    signs: str
    tests: tuple[tuple[str, str], ...]  # (test name, typical finding)
    key_test: str  # the single most useful test for the diagnosis
    drugs: tuple[str, ...]
    treatment: str
    advice: tuple[str, ...]
    red_flags: tuple[str, ...]
    complaints: tuple[str, ...]  # lay chief complaints, as the patient (or a parent) would say them
    ask: str  # the doctor's follow-up question to a complaint
    reply: str  # the patient's answer to `ask`, valid after either complaint
    people: str = ""
    site: str = ""  # anatomical site, used as a 解剖部位 entity
    surgery: str = ""
    alt_depts: tuple[str, ...] = ()  # other departments that are also a right answer
    sex: str = ""  # "女"/"男" when the disease only occurs in one sex
    age: tuple[int, int] = (18, 75)
    urgent: bool = False  # needs emergency care as soon as it is suspected


@dataclass(frozen=True)
class Drug:
    name: str
    cls: str  # pharmacological class
    indication: str
    dose: str  # usual adult dose, as on the label
    contraindication: str
    adverse: str
    notes: str
    hallmark: str = ""  # the characteristic adverse effect, when one stands out


@dataclass(frozen=True)
class Lab:
    name: str
    abbr: str
    panel: str  # the order the test belongs to (血常规, 肝功能, ...)
    range_text: str  # adult reference range with unit
    high: str  # what a raised value suggests
    low: str  # what a lowered value suggests ("" if not meaningful)


def _split(text: str, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(sep) if part.strip())


def D(  # noqa: N802 - reads as a table row constructor in the fact files
    *,
    name: str,
    dept: str,
    system: str,
    define: str,
    cause: str,
    symptoms: str,
    signs: str,
    tests: str,
    key_test: str,
    drugs: str,
    treatment: str,
    advice: str,
    red_flags: str,
    complaints: str,
    ask: str,
    reply: str,
    people: str = "",
    site: str = "",
    surgery: str = "",
    alt_depts: str = "",
    sex: str = "",
    age: tuple[int, int] = (18, 75),
    urgent: bool = False,
) -> Disease:
    """Build a Disease from delimited strings: lists use 、 (items) or ； (sentences), tests use
    "名称：所见；名称：所见", complaints use |."""
    test_pairs = []
    for item in _split(tests, "；"):
        test_name, _, finding = item.partition("：")
        if not finding:
            raise ValueError(f"disease {name!r}: test {item!r} needs the form '名称：所见'")
        test_pairs.append((test_name.strip(), finding.strip()))
    return Disease(
        name=name, dept=dept, system=system, define=define, cause=cause,
        symptoms=_split(symptoms, "、"), signs=signs, tests=tuple(test_pairs), key_test=key_test,
        drugs=_split(drugs, "、"), treatment=treatment, advice=_split(advice, "；"),
        red_flags=_split(red_flags, "；"), complaints=_split(complaints, "|"), ask=ask, reply=reply,
        people=people, site=site, surgery=surgery, alt_depts=_split(alt_depts, "、"), sex=sex, age=age,
        urgent=urgent,
    )
