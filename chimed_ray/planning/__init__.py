"""The memory plan: per role, per GPU and per phase, the bytes a stage config needs, before any
actor starts. Pure arithmetic over model shapes (`config.json`) and the config; no torch, no Ray.

- `shapes`: model shapes and parameter counts from `config.json`
- `memory`: the formulas (DeepSpeed's model-state estimators, activations, logits, KV cache)
- `roles`, `stages`: which model runs where and in which phase, per stage
- `plan`: the plan's data, peaks and verdict; `advice`: verified changes that make it fit
- `report`, `command`: the table / JSON of `chimed-ray plan`; `check`: the stages' refusal
"""

from chimed_ray.planning.check import check_memory, plan_and_advice
from chimed_ray.planning.stages import PLANNED_STAGES, stage_plan

__all__ = ["PLANNED_STAGES", "check_memory", "plan_and_advice", "stage_plan"]
