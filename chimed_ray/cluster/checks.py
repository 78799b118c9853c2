"""What a stage command asks of a cluster: the workers its config requests, the paths it reads and
writes, and whether the node groups of a cluster file can hold and mount them (used by
`chimed_ray.cluster.files`)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from chimed_ray.cluster.submit import IMAGE_CODE_ROOT, PATH_KEYS, REPO_ROOT, WRITTEN_KEYS, _COMMAND


# --- what a stage asks of a cluster --------------------------------------------------------------


@dataclass
class NodeGroup:
    """Ray nodes of one kind: head, a launcher node type or a KubeRay worker group."""

    name: str
    cpus: float
    gpus: float
    at_start: int  # nodes present when the cluster comes up
    at_most: int
    mounts: dict[str, bool] | None = None  # container path -> read-only; None: unknown (no docker)

    def holds(self, cpus: float, gpus: float) -> int:
        """How many workers of `cpus` CPUs and `gpus` GPUs one node of this group holds."""
        fits = [self.cpus // cpus if cpus else float("inf"), self.gpus // gpus if gpus else float("inf")]
        return int(min(fits)) if min(fits) != float("inf") else 1_000_000  # asks for nothing: no limit


@dataclass
class StageCommand:
    """`chimed-ray <stage> --config <file> key=value ...`, with the config merged as a plain dict."""

    stage: str
    config_file: Path
    overrides: list[str] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        """The config file with the overrides applied (not validated: any stage's config)."""
        from chimed_ray.config.loader import merge, parse_overrides, read_yaml

        return merge(read_yaml(self.config_file), parse_overrides(self.overrides))


def repo_path(path: str) -> Path:
    """A config path as named on the cluster (relative, or under IMAGE_CODE_ROOT) in this repo."""
    if path.startswith(IMAGE_CODE_ROOT + "/"):
        path = path[len(IMAGE_CODE_ROOT) + 1 :]
    return REPO_ROOT / path


def parse_stage_command(command: str) -> StageCommand:
    """Parse a `chimed-ray` (or `python -m chimed_ray`) command line; ValueError names the problem."""
    from chimed_ray.cli import STAGES

    words = shlex.split(command)
    start = 1 if words[:1] == ["chimed-ray"] else 3 if words[:3] == ["python", "-m", "chimed_ray"] else None
    if start is None or len(words) <= start:
        raise ValueError(f"{command!r}: expected `chimed-ray <stage> --config FILE key=value ...`")
    stage, rest = words[start], words[start + 1 :]
    if stage not in STAGES:
        raise ValueError(f"{command!r}: unknown stage {stage!r}")
    if len(rest) < 2 or rest[0] not in ("--config", "-c"):
        raise ValueError(f"{command!r}: expected --config FILE after the stage")
    config_file = repo_path(rest[1])
    if not config_file.is_file():
        raise ValueError(f"{command!r}: config {rest[1]} is not in the repo ({config_file})")
    return StageCommand(stage, config_file, [w for w in rest[2:] if "=" in w])


def worker_demands(data: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """(what, workers, CPUs each, GPUs each) for every kind of Ray worker a stage config asks for."""
    from chimed_ray.config.common import ScaleConfig
    from chimed_ray.config.loader import from_dict

    scale = data.get("scale") or {}
    if "num_actors" in scale:  # eval: a Ray Data actor pool
        from chimed_ray.config.eval import EvalScaleConfig

        actors = from_dict(EvalScaleConfig, scale, "scale.")
        # auto sizes the pool to the cluster (or runs in-process): it needs room for one GPU actor at most.
        count = actors.num_actors if actors.num_actors != "auto" else int(actors.gpus_per_actor > 0)
        return [("scale", count, actors.cpus_per_actor, actors.gpus_per_actor)] if count else []
    if "policy" in scale:  # ppo: one actor group per role
        from chimed_ray.config.rlhf import ROLES, PPOScaleConfig

        ppo = from_dict(PPOScaleConfig, scale, "scale.")
        roles = [(role, getattr(ppo, role)) for role in ROLES if getattr(ppo, role).num_workers]
        gpus = [group.gpus_per_worker if ppo.use_gpu else 0.0 for _, group in roles]
        if ppo.placement == "colocate":  # bundle i holds rank i of every role
            cpus = sum(group.cpus_per_worker for _, group in roles)
            return [("scale (colocated)", ppo.policy.num_workers, cpus, sum(gpus))]
        return [(f"scale.{role}", g.num_workers, g.cpus_per_worker, gpu) for (role, g), gpu in zip(roles, gpus)]
    if "num_workers" in scale or "use_gpu" in scale:  # Ray Train stages
        workers = from_dict(ScaleConfig, scale, "scale.")
        gpus_each = workers.gpus_per_worker if workers.use_gpu else 0.0
        return [("scale", workers.num_workers, workers.cpus_per_worker, gpus_each)]
    return []


def _leaf(key: str) -> str:
    return re.sub(r"(\[\d+\])+$", "", key).rsplit(".", 1)[-1]


def config_paths(data: Any, key: str = "") -> Iterable[tuple[str, str]]:
    """(dotted key, absolute path) of every path-valued key of a config; URIs and relative paths
    (the driver's own directory) are left out."""
    if isinstance(data, dict):
        for name, value in data.items():
            yield from config_paths(value, f"{key}.{name}" if key else str(name))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from config_paths(item, f"{key}[{index}]")
    elif isinstance(data, str) and _leaf(key) in PATH_KEYS and data.startswith("/"):
        yield key, data


def check_fits(
    where: str, demands: list[tuple[str, int, float, float]], groups: list[NodeGroup], at_start: bool
) -> list[str]:
    """Problems if the workers of `demands` do not fit `groups` at most (and at start): each kind on
    its own, and all kinds together by total CPUs and GPUs."""
    problems = []
    for label in ["at most", "at start"] if at_start else ["at most"]:
        nodes = {group.name: group.at_most if label == "at most" else group.at_start for group in groups}
        for what, count, cpus, gpus in demands:
            room = sum(nodes[group.name] * group.holds(cpus, gpus) for group in groups)
            if room < count:
                shape = f"{count} workers x ({cpus:g} CPU, {gpus:g} GPU)"
                problems.append(f"{where}: {what}: {shape} but the cluster holds {room} {label}")
        for resource, index in (("CPU", 2), ("GPU", 3)):
            need = sum(demand[1] * demand[index] for demand in demands)
            have = sum(nodes[group.name] * (group.cpus, group.gpus)[index - 2] for group in groups)
            if len(demands) > 1 and need > have:
                problems.append(f"{where}: needs {need:g} {resource} in all but the cluster has {have:g} {label}")
    return problems


def check_paths(where: str, data: dict[str, Any], groups: list[NodeGroup]) -> list[str]:
    """Problems for config paths that some Ray node does not mount (or mounts read-only but writes)."""
    problems = []
    for key, path in config_paths(data):
        for group in groups:
            if group.mounts is None:
                continue
            mounts = [m for m in group.mounts if path == m or path.startswith(m.rstrip("/") + "/")]
            if not mounts:
                problems.append(f"{where}: {key}={path} is not on a volume mounted by {group.name}")
            elif _leaf(key) in WRITTEN_KEYS and all(group.mounts[m] for m in mounts):
                problems.append(f"{where}: {key}={path} is written but {group.name} mounts it read-only")
    return problems


def check_stage_command(where: str, command: str, groups: list[NodeGroup]) -> list[str]:
    """Problems of one stage command run on `groups`: stage, config, resources and paths."""
    try:
        data = parse_stage_command(command).data()
        demands = worker_demands(data)
    except Exception as exc:  # ValueError, ConfigError: each names the key or file
        return [f"{where}: {exc}"]
    problems = check_paths(where, data, groups)
    if demands and groups:
        # Ray Train stages compare the request with the cluster as it is when they start.
        scale = data.get("scale") or {}
        at_start = "num_workers" in scale and bool(scale.get("check_cluster", True))
        problems += check_fits(where, demands, groups, at_start=at_start)
    return problems


def commands_in_text(text: str) -> list[str]:
    """Every `chimed-ray <stage> --config FILE ...` command written in a file (comments, docs)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():  # join shell continuation lines
        for match in _COMMAND.finditer(line):
            command = re.split(r"`|\s#|\s{2}\(", line[match.start() :])[0]  # up to code end or comment
            commands.append(command.strip())
    return commands
