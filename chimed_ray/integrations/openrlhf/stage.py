"""`chimed-ray ppo ... engine=openrlhf`: the PPO stage handed to OpenRLHF on a GPU cluster.

  1. translate the config (refusing, in one line, what OpenRLHF cannot express)
  2. check the cluster has the GPUs, before anything is written or submitted
  3. export the prompts and the ChiMed-templated model under `<output_dir>/openrlhf/`
  4. submit `python -m openrlhf.cli.train_ppo_ray ...` as a Ray job and stream its logs
  5. import OpenRLHF's final model as `<output_dir>/final` (safetensors), for eval and serve

`--dry-run` stops after 3 and prints the command; it exports only when the model and data are
readable here (a config for a cluster's shared storage still prints its command).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable, Optional

from chimed_ray.config import dump_config
from chimed_ray.config.rlhf import PPOConfig
from chimed_ray.integrations.openrlhf.export import chimed_tokenizer, export_prompts, handover_model
from chimed_ray.integrations.openrlhf.flags import (
    GPUS_PER_NODE,
    Handover,
    check_translatable,
    final_hf_dir,
    gpus_needed,
    translate,
)
from chimed_ray.integrations.openrlhf.job import (
    cluster_gpus,
    import_checkpoint,
    require_gpus,
    runtime_env,
    submit_and_follow,
)
from chimed_ray.utils.files import InputError

PREFIX = "[chimed-ray ppo]"


def handover_paths(output_dir: str) -> Handover:
    work = Path(output_dir) / "openrlhf"
    return Handover(actor_dir=str(work / "actor"), prompts_file=str(work / "prompts.jsonl"), work_dir=str(work))


def run_openrlhf_ppo(config: PPOConfig, dry_run: bool = False, echo: Callable[[str], None] = print) -> Optional[Path]:
    """Run (or with `dry_run`, print) the PPO stage on OpenRLHF; returns `<output_dir>/final`."""
    from chimed_ray.trainers.ppo import resolve_paths

    config = resolve_paths(config)
    check_translatable(config)
    handover, gpus_per_node = handover_paths(config.output_dir), GPUS_PER_NODE
    if not dry_run:
        from chimed_ray.trainers.launch import ensure_ray

        ensure_ray()
        total, gpus_per_node = cluster_gpus()
        require_gpus(total, gpus_needed(config))
    translation = translate(config, handover, gpus_per_node)
    tokenizer = prepare_inputs(config, handover, dry_run, echo)
    for note in translation.notes:
        echo(f"{PREFIX} note: {note}")
    echo(f"{PREFIX} OpenRLHF command:\n{shlex.join(translation.argv)}")
    if dry_run:
        echo(f"{PREFIX} dry run: nothing submitted")
        return None
    dump_config(config, Path(config.output_dir) / "config.yaml")
    submit_and_follow(translation.argv, runtime_env(), config.run_name, echo)
    final = import_checkpoint(Path(final_hf_dir(handover)), config.model.path, tokenizer, Path(config.output_dir) / "final")
    echo(f"{PREFIX} final policy: {final}")
    return final


def prepare_inputs(config: PPOConfig, handover: Handover, dry_run: bool, echo: Callable[[str], None]):
    """Export prompts and the handover model; a dry run on a machine without them says so instead."""
    try:
        tokenizer = chimed_tokenizer(config)
        exported = export_prompts(config, tokenizer, Path(handover.prompts_file))
        handover_model(config.model.path, tokenizer, Path(handover.actor_dir))
    except (InputError, FileNotFoundError, OSError) as exc:
        if not dry_run:
            raise
        echo(f"{PREFIX} exported data: {handover.prompts_file} (not written in this dry run: {exc})")
        return None
    dropped = f", {exported.dropped} longer than max_prompt_length left out" if exported.dropped else ""
    echo(f"{PREFIX} exported data: {exported.path} ({exported.count} prompts, {exported.shortened} shortened to fit"
         f"{dropped}); model with the ChiMed chat template: {handover.actor_dir}")
    return tokenizer
