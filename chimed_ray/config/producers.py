"""Which stage makes a checkpoint: so a stage run before its inputs exist names the command that
creates them ("run `chimed-ray pretrain --config configs/pretrain/tiny.yaml` first").

A stage writes its result to `<output_dir>/final`; the stage configs under `configs/` say where
each stage's `output_dir` is, so the producer of a missing `.../final` is found by looking, not by
a hand-kept table.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config_dirs() -> list[Path]:
    unique: dict[Path, Path] = {}
    for directory in (Path.cwd() / "configs", REPO_CONFIGS):  # as the user names them first
        if directory.is_dir():
            unique.setdefault(directory.resolve(), directory)
    return list(unique.values())


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def producer_command(checkpoint: str | Path) -> str | None:
    """`chimed-ray <stage> --config <file>` whose `output_dir/final` is `checkpoint`, if any."""
    target = Path(checkpoint).expanduser().resolve()
    if target.name != "final":
        return None
    for directory in _config_dirs():
        for config_file in sorted(directory.glob("*/*.yaml")):
            stage = config_file.parent.name.replace("_", "-")
            if stage in ("pipeline", "eval", "serve"):
                continue
            try:
                data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            output_dir = data.get("output_dir") if isinstance(data, dict) else None
            if isinstance(output_dir, str) and Path(output_dir).expanduser().resolve() == target.parent:
                return f"chimed-ray {stage} --config {_shown(config_file)}"
    return None


def producer_hint(checkpoint: str | Path, key: str) -> str:
    """What to do about a missing checkpoint: run the stage that makes it, or point `key` elsewhere."""
    command = producer_command(checkpoint)
    if command:
        return f"run `{command}` first, or set {key}= to an existing HF checkpoint"
    return f"set {key}= to an existing HF checkpoint directory"
