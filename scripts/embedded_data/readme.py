"""The README written next to the generated data, with the counts of the current build."""

from __future__ import annotations

FILES = [
    ("pretrain/train.jsonl", "`{\"text\": str}`",
     "Pretraining passages: encyclopedia entries, textbook sections, review abstracts, patient-education Q&A, "
     "case reports, drug monographs, lab-test explainers, symptom and department overviews, "
     "differential-diagnosis notes."),
    ("pretrain/eval.jsonl", "`{\"text\": str}`", "About 7% of the passages, held out at random."),
    ("sft/train.jsonl",
     "ShareGPT `{\"conversations\": [{\"from\": \"human\" or \"gpt\", \"value\": str}, ...]}`",
     "About 60% single-turn medical QA (diseases, drugs, lab tests), 40% doctor-patient dialogues of 2-4 turns, "
     "plus exam practice in the C-Eval format (answered with the letter) on entities and facts the MCQ sets do not ask."),
    ("sft/eval.jsonl", "ShareGPT", "Held-out single-turn questions (other question keys, other phrasing) and dialogues "
     "about diseases whose dialogues are not in training."),
    ("preference/train.jsonl", "`{\"prompt\", \"chosen\", \"rejected\"}`",
     "Chosen = accurate, safe, complete; rejected is, in equal shares, a plausible factual error (a same-system "
     "or same-class entity's facts), an unsafe answer (the right facts, then unsafe advice), an evasive non-answer "
     "(composed from parts) or an answer cut short. Chosen is the longer answer in about half of the pairs."),
    ("preference/eval.jsonl", "same", "Held-out prompts."),
    ("eval/mcq.jsonl", "C-Eval `{id, subject, question, A, B, C, D, answer, explanation}`", "Four subjects: "
     "clinical_medicine, basic_medicine, pharmacology, physician; answer letters balanced."),
    ("eval/mcq_dev.jsonl", "C-Eval", "5 items per subject for few-shot prompts, disjoint from mcq.jsonl."),
    ("eval/medqa.jsonl", "MedQA-MCMLE `{question, options: {A..E}, answer, meta_info}`", "Case vignettes: "
     "most likely diagnosis, or first-choice test."),
    ("eval/ner.jsonl", "CCKS-2019 `{originalText, entities: [{start_pos, end_pos, label_type}]}`", "Clinical-note "
     "sentences; end_pos exclusive; CCKS-2019's six labels 疾病和诊断, 影像检查, 实验室检验, 手术, 药物, 解剖部位 "
     "(endoscopy and physiological tests are not annotated, as in CCKS-2019)."),
    ("eval/qa.jsonl", "`{question, answer}`", "Open QA about held-out entities (in no training file), worded with "
     "held-out question templates and answer phrasings."),
    ("eval/dialogue.jsonl", "ShareGPT", "Dialogues about the held-out diseases in held-out phrasings; the last gpt "
     "turn is the reference."),
    ("eval/cami.jsonl", "`{id, subscale, reverse, text}`", "CAMI (Taylor & Dear 1981), 40 items in 4 subscales of 10 "
     "in the published interleaved order (items 1-20 for, 21-40 against), our own Chinese wording."),
    ("eval/mica.jsonl", "`{id, subscale, reverse, text}`", "MICA v4 (Gabbidon et al. 2013), 16 items, our own Chinese "
     "wording; subscale is always `total`."),
]


def render(counts: dict[str, int], sizes: dict[str, int], facts: dict[str, int]) -> str:
    lines = [
        "# Embedded default datasets",
        "",
        "Small, real-content Chinese medical datasets that ship with chimed-ray, so that every stage "
        "(pretrain, SFT, reward/DPO, evaluation) runs without a dataset hub. All files are UTF-8 JSON Lines, "
        "one object per line.",
        "",
        "| file | rows | KiB | format | content |",
        "|---|---:|---:|---|---|",
    ]
    for name, fmt, content in FILES:
        lines.append(f"| `{name}` | {counts[name]} | {sizes[name] / 1024:.1f} | {fmt} | {content} |")
    lines += [
        "| `eval/scales.json` | - | - | `{cami: {...}, mica: {...}}` | Likert points, labels, subscales and "
        "scoring notes for the two attitude scales. |",
        "",
        "## How it was made",
        "",
        f"`scripts/embedded_data/` holds a hand-written fact table ({facts['diseases']} diseases across "
        f"departments, {facts['drugs']} drugs, {facts['labs']} lab tests with adult reference ranges) and "
        "template-based generators over it. Regenerate everything with",
        "",
        "    python scripts/embedded_data/build.py",
        "",
        "The build is deterministic (seeded RNG per output file) and refuses to write data that fails its "
        "checks: NER offsets, evaluation questions absent from training data (MCQ question text included), "
        "answer lengths, `check.py` (doubled words and phrases, hedged textbook signs given as one patient's "
        "findings, every emergency triaged to 120/急诊), preference length balance (chosen longer in 40-60% of "
        "pairs), and clause overlap: QA and dialogue references share under 30% of their clause text with the "
        "training files (`python scripts/clause_overlap.py` prints it).",
        "",
        "Held-out entities (12 diseases, 6 drugs, 4 lab tests; `held_out.py`) appear in no training file; the "
        "QA and dialogue evaluation sets ask only about them, in phrasings training never uses. MCQ items ask "
        "about trained entities (continued pretraining teaches their facts), with distractors from the same "
        "system and class. Onset and course follow each disease (an infarct presents within hours, a chronic "
        "disease after months).",
        "",
        "## Caveats",
        "",
        "- The content follows common Chinese clinical guidelines and textbooks but is simplified; it is "
        "training and test data, not medical advice. Reference ranges differ between laboratories.",
        "- Doses are usual adult doses as printed on labels; generated answers tell the reader to follow "
        "their doctor and the package insert.",
        "- Being template-generated, the data is far more regular than real corpora; it exercises the "
        "pipeline and gives a small in-domain signal, not state-of-the-art quality.",
        "",
        "## License",
        "",
        "Written by the chimed-ray authors and released under the same license as chimed-ray. The CAMI and "
        "MICA items are our own Chinese wording following the structure of the published scales "
        "(Taylor & Dear 1981; Gabbidon et al. 2013); cite those papers when reporting scale results.",
        "",
    ]
    return "\n".join(lines)
