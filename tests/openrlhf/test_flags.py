"""Every flag chimed-ray emits exists in the pinned OpenRLHF, with the right arity, a value of the
right type and an allowed choice; the fixture itself was read from OpenRLHF's source (scripts/)."""

from __future__ import annotations

import argparse

import pytest

# One override set per code path of the translation: estimators, placements, LoRA, KL modes.
VARIANTS = [
    (),
    ("algorithm.advantage_estimator=grpo", "algorithm.kl_in_loss=true", "algorithm.kl_target=0", "algorithm.dual_clip=3"),
    ("algorithm.advantage_estimator=grpo", "algorithm.norm_by_std=false", "algorithm.entropy_coef=0.01"),
    ("algorithm.advantage_estimator=rloo", "algorithm.agg_mode=seq_mean_token_mean"),
    ("algorithm.advantage_estimator=reinforce_pp", "algorithm.gamma=0.99"),
    ("algorithm.advantage_estimator=reinforce_pp_baseline",),
    ("rollout.engine=vllm", "rollout.separate_engine=true", "scale.rollout.num_workers=2",
     "scale.rollout.gpus_per_worker=2", "rollout.async=true"),
    ("scale.placement=colocate", "scale.policy.gpus_per_worker=0.25", "scale.critic.gpus_per_worker=0.25",
     "scale.reference.gpus_per_worker=0.25", "scale.reward.gpus_per_worker=0.25", "scale.reference.num_workers=8",
     "scale.critic.num_workers=8", "scale.reward.num_workers=8"),
    ("model.lora.enabled=true", "model.lora.rank=16", "model.lora.alpha=32", "scale.offload_optimizer=true",
     "scale.precision=fp16", "resume=true", "logging.tensorboard=false"),
]


def openrlhf_parser(flags: dict) -> argparse.ArgumentParser:
    """An argparse parser built from the fixture, as strict as OpenRLHF's own."""
    types = {"int": int, "float": float, "str": str}
    parser = argparse.ArgumentParser(exit_on_error=False)
    for name, spec in flags.items():
        options = {"choices": spec["choices"]} if "choices" in spec else {}
        if spec["nargs"] == 0:
            parser.add_argument(name, action="store_true")
            continue
        if spec["nargs"] != 1:
            options["nargs"] = spec["nargs"]
        parser.add_argument(name, type=types.get(spec.get("type", "str"), str), **options)
    return parser


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda overrides: " ".join(overrides) or "gpu_13b")
def test_every_emitted_flag_exists_in_openrlhf_with_its_arity(translated, openrlhf_flags, flags_of, overrides):
    argv = translated(*overrides).argv
    for flag, values in flags_of(argv).items():
        assert flag in openrlhf_flags, f"{flag} is not a flag of OpenRLHF's train_ppo_ray"
        nargs = openrlhf_flags[flag]["nargs"]
        if isinstance(nargs, int):
            assert len(values) == nargs, f"{flag} takes {nargs} values, we give {values}"
        else:
            assert len(values) >= (1 if nargs == "+" else 0) and (nargs != "?" or len(values) <= 1), (flag, values)
    # And the whole command parses under the fixture's types and choices (exit_on_error=False raises).
    parser = openrlhf_parser(openrlhf_flags)
    namespace = parser.parse_args(argv[3:])
    assert getattr(namespace, "actor.model_name_or_path") == "/shared/ppo/openrlhf/actor"


def test_a_flag_openrlhf_does_not_have_fails_the_check(openrlhf_flags, flags_of):
    # The check itself can fail: an invented flag and a wrong arity are both caught.
    parser = openrlhf_parser(openrlhf_flags)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(["--actor.learning_rate", "1e-6"])
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(["--actor.eps_clip_low_high", "0.2"])
    assert openrlhf_flags["--train.colocate_all"]["nargs"] == 0
    assert openrlhf_flags["--ds.lora.target_modules"]["nargs"] == "*"
    assert "--critic.adam.lr" in openrlhf_flags  # made in OpenRLHF's `for prefix in (...)` loop


def test_the_acceptance_command_dry_run_prints_a_vouched_command(capsys, openrlhf_flags, flags_of):
    import shlex

    from pathlib import Path

    from chimed_ray.cli import main

    gpu_13b = str(Path(__file__).resolve().parents[2] / "configs" / "ppo" / "gpu_13b.yaml")
    assert main(["ppo", "--config", gpu_13b, "--dry-run", "engine=openrlhf"]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if line.startswith("python -m openrlhf.cli.train_ppo_ray"))
    argv = shlex.split(command)
    assert set(flags_of(argv)) <= set(openrlhf_flags)
    openrlhf_parser(openrlhf_flags).parse_args(argv[3:])
    assert "prompts.jsonl" in out and "dry run: nothing submitted" in out
