"""`chimed-ray plan --config configs/ppo/gpu_13b.yaml [--stage ppo] [--json] [key=value ...]`

Prints the memory plan of a stage config: per role and per GPU, the bytes of each phase, the peak,
whether it fits `scale.gpu_memory_gb`, and the smallest verified change if it does not. Model shapes
come from `config.json` in each model directory (weights are never read), so
`model.path=tests/fixtures/ziya2_13b` plans a 13B run on a laptop. Exit 0 if it fits, 1 if not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from chimed_ray.config.loader import ConfigError, load_config
from chimed_ray.planning.check import plan_and_advice
from chimed_ray.planning.report import plan_json, print_table
from chimed_ray.planning.stages import PLANNED_STAGES


def infer_stage(config_path: str | None, stage: str | None) -> str:
    """`--stage`, else the directory of the YAML (configs/<stage>/x.yaml, `_` read as `-`)."""
    if stage:
        if stage not in PLANNED_STAGES:
            raise ConfigError(f"--stage: expected one of {list(PLANNED_STAGES)}, got {stage!r}")
        return stage
    if config_path:
        guess = Path(config_path).resolve().parent.name.replace("_", "-")
        if guess in PLANNED_STAGES:
            return guess
    raise ConfigError(f"cannot tell the stage of {config_path or 'the defaults'} from its directory; "
                      f"pass --stage (one of {', '.join(PLANNED_STAGES)})")


def main(argv: Sequence[str]) -> int:
    from chimed_ray.cli import stage_config_class

    parser = argparse.ArgumentParser(prog="chimed-ray plan", description="memory plan of a stage config")
    parser.add_argument("--config", "-c", default=None, help="YAML config of the stage (see configs/)")
    parser.add_argument("--stage", default=None, help=f"one of {', '.join(PLANNED_STAGES)} (default: the YAML's directory)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. scale.policy.num_workers=16")
    args = parser.parse_args(list(argv))
    stage = infer_stage(args.config, args.stage)
    config = load_config(stage_config_class(stage), args.config, args.overrides)
    plan, advice = plan_and_advice(stage, config)
    if args.json:
        print(json.dumps(plan_json(plan, advice)))
    else:
        print_table(plan, advice, f"chimed-ray plan: {stage} {args.config or ''}".strip())
    return 0 if plan.fits else 1
