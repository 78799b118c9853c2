"""`chimed-ray <stage> --config configs/<stage>/x.yaml key=value ...`

Each stage module exposes `main(argv) -> int`; this file only dispatches and turns known input
errors into one clear line and a non-zero exit code instead of a traceback wall.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

STAGES = {
    "pretrain": ("chimed_ray.trainers.pretrain", "continued pretraining on medical text (Ray Train)"),
    "sft": ("chimed_ray.trainers.sft", "supervised fine-tuning, loss on answers only (Ray Train)"),
    "reward": ("chimed_ray.trainers.reward", "pairwise reward model (Ray Train)"),
    "ppo": ("chimed_ray.trainers.ppo", "PPO / GRPO / RLOO / REINFORCE++ on Ray actor groups"),
    "rejection-sampling": ("chimed_ray.trainers.rejection_sampling", "reward-guided rejection sampling"),
    "dpo": ("chimed_ray.trainers.dpo", "offline preference optimisation: DPO, IPO, SimPO, ORPO"),
    "eval": ("chimed_ray.evaluation.run", "MCQ, NER, QA/dialogue and bias-scale evaluation"),
    "serve": ("chimed_ray.serving.run", "OpenAI-compatible Ray Serve app for checkpoints"),
    "pipeline": ("chimed_ray.pipeline", "PT -> SFT -> RM -> RLHF -> eval -> serve"),
    "plan": ("chimed_ray.planning.command", "memory plan of a stage config: per role, per GPU, fits or not"),
}


STAGE_CONFIGS = {
    "pretrain": "chimed_ray.config.train:PretrainConfig",
    "sft": "chimed_ray.config.train:SFTConfig",
    "reward": "chimed_ray.config.rlhf:RewardConfig",
    "ppo": "chimed_ray.config.rlhf:PPOConfig",
    "rejection-sampling": "chimed_ray.config.rlhf:RejectionSamplingConfig",
    "dpo": "chimed_ray.config.dpo:DPOConfig",
    "eval": "chimed_ray.config.eval:EvalConfig",
    "serve": "chimed_ray.config.serve:ServeConfig",
    "pipeline": "chimed_ray.config.pipeline:PipelineConfig",
}


def stage_config_class(stage: str) -> type:
    """The typed config class of `stage` (for tools that check configs without running them)."""
    module_name, class_name = STAGE_CONFIGS[stage].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _known_errors() -> tuple[type[BaseException], ...]:
    from chimed_ray.config import ConfigError
    from chimed_ray.utils.files import InputError

    return (ConfigError, InputError, FileNotFoundError)


def _training_failure_message(exc: BaseException) -> str:
    """One line for a failed Ray run: the user-facing error raised inside a worker if there is
    one (bad data found while reading), else the first line of Ray's summary."""
    import re

    text = str(exc)
    match = re.search(r"(?:InputError|ConfigError|FileNotFoundError): (.+)", text)
    if match:
        return match.group(1).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{first} (see the log above; rerun with resume=true to continue from the last checkpoint)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `chimed-ray` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        lines = [f"  {name:<20} {help_}" for name, (_, help_) in STAGES.items()]
        print("usage: chimed-ray <stage> [--config FILE] [key=value ...]\n\nstages:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nchimed-ray: error: unknown stage {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(STAGES[argv[0]][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except _known_errors() as exc:
        print(f"chimed-ray {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; show one line, not a wall
        from chimed_ray.distributed.group import WorkerDiedError

        if isinstance(exc, WorkerDiedError):  # already one line naming the role and what to do
            print(f"chimed-ray {argv[0]}: error: {exc}", file=sys.stderr)
            return 1
        if type(exc).__module__.startswith("ray."):
            print(f"chimed-ray {argv[0]}: error: {_training_failure_message(exc)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
