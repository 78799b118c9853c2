"""Evaluation the ChiMed-GPT way: MCQ (C-Eval/CMMLU/MedQA), NER, QA and dialogue generation, and
the CAMI/MICA bias scales, on local checkpoints (in-process or a Ray Data actor pool) or an
OpenAI-compatible endpoint. Entry points: `run.main` (the `eval` stage) and `run.run_evaluation`."""
