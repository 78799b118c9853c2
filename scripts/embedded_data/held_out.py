"""Entities held out of every training file (pretraining corpus, SFT, preference pairs, MCQ practice).

The QA and dialogue evaluation sets ask about these entities only, in phrasings training never uses,
so their references share little text with anything a model was trained on (scripts/clause_overlap.py
measures it). MCQ items ask about trained entities: continued pretraining is meant to teach them.
"""

from __future__ import annotations

from common import rng_for
from facts import DISEASES, DRUGS, LABS

HELD_OUT_DISEASE_COUNT = 12
HELD_OUT_DRUG_COUNT = 6
HELD_OUT_LAB_COUNT = 4


def _pick(names: list[str], count: int, stream: str) -> frozenset[str]:
    names = sorted(names)
    rng_for(stream).shuffle(names)
    return frozenset(names[:count])


# Two emergencies among the held-out diseases, so the evaluation also checks triage advice.
_URGENT = _pick([d.name for d in DISEASES if d.urgent], 2, "held-out-urgent")
HELD_OUT_DISEASES = _URGENT | _pick([d.name for d in DISEASES if not d.urgent], HELD_OUT_DISEASE_COUNT - 2, "held-out-diseases")
HELD_OUT_DRUGS = _pick([g.name for g in DRUGS], HELD_OUT_DRUG_COUNT, "held-out-drugs")
HELD_OUT_LABS = _pick([lab.name for lab in LABS if lab.low], HELD_OUT_LAB_COUNT, "held-out-labs")
HELD_OUT = HELD_OUT_DISEASES | HELD_OUT_DRUGS | HELD_OUT_LABS

TRAIN_DISEASES = [d for d in DISEASES if d.name not in HELD_OUT_DISEASES]
TRAIN_DRUGS = [g for g in DRUGS if g.name not in HELD_OUT_DRUGS]
TRAIN_LABS = [lab for lab in LABS if lab.name not in HELD_OUT_LABS]
