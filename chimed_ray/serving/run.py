"""`chimed-ray serve --checkpoint DIR [--checkpoint name=DIR ...] [--config FILE] [key=value ...]`

Publishes checkpoints behind the OpenAI API on the current Ray cluster (or a local one), prints
the endpoint and blocks until Ctrl-C; `block=false` returns once the app is up, leaving it
running on a long-lived cluster (e.g. under `ray job submit`).
"""

from __future__ import annotations

import time
from typing import Sequence

from chimed_ray.config.arguments import parse_stage_config, stage_parser
from chimed_ray.config.serve import ServeConfig, checkpoint_overrides


def parse_args(argv: Sequence[str]) -> ServeConfig:
    """Validated ServeConfig from the command line; `--checkpoint` replaces the YAML's models."""
    parser = stage_parser("serve", ServeConfig)
    parser.add_argument(
        "--checkpoint", action="append", default=[], metavar="DIR|NAME=DIR",
        help="HF checkpoint directory to serve (repeatable); the model name defaults to the dir name",
    )
    args = parser.parse_intermixed_args(list(argv))
    rebuilt = (["--config", args.config] if args.config else []) + list(args.overrides)
    rebuilt += checkpoint_overrides(args.checkpoint)
    config, _ = parse_stage_config("serve", ServeConfig, rebuilt, parser)
    return config


def main(argv: Sequence[str]) -> int:
    """Entry point of the `serve` stage."""
    from chimed_ray.serving.app import shutdown_server, start_server

    config = parse_args(argv)
    url = start_server(config)
    names = ", ".join(model.served_name() for model in config.models)
    print(f"chimed-ray serve: {names} at {url}  (OpenAI base_url; GET {url.removesuffix('/v1')}/health)", flush=True)
    if not config.block:
        return 0
    print("chimed-ray serve: serving until Ctrl-C", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("chimed-ray serve: shutting down", flush=True)
        shutdown_server(config.http.app_name)
    return 0
