"""The arguments every stage takes: `--config FILE` and trailing `key=value` overrides, parsed
into a validated stage config before anything runs (`chimed-ray <stage> ...`)."""

from __future__ import annotations

import argparse
from typing import Sequence, TypeVar

T = TypeVar("T")


def stage_parser(stage: str, config_cls: type | None = None) -> argparse.ArgumentParser:
    """The argument parser every stage shares: `--config FILE` and trailing `key=value` overrides;
    its description is the first line of the stage config's docstring."""
    doc = (config_cls.__doc__ or "").strip() if config_cls is not None else ""
    parser = argparse.ArgumentParser(prog=f"chimed-ray {stage}", description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--config", "-c", default=None, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    return parser


def parse_stage_config(
    stage: str, config_cls: type[T], argv: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> tuple[T, argparse.Namespace]:
    """Parse `argv` for `stage` into a validated `config_cls` (plus the parsed namespace)."""
    from chimed_ray.config.loader import load_config

    parser = parser or stage_parser(stage, config_cls)
    args = parser.parse_args(list(argv))
    return load_config(config_cls, args.config, args.overrides), args
