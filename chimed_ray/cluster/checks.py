"""Check the cluster files in `cluster/`: `validate_cluster_files` runs the validation `ray up` runs
before it touches a cloud (`prepare_config` + `validate_config`, offline) on cluster-launcher YAMLs,
checks KubeRay manifests against a JSON schema, and cross-checks both against the repo: commands name
real stages and configs, GPU counts agree with the instance types, every GPU stage config fits the
cluster, and the paths it reads and writes are mounted on every Ray node."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chimed_ray.cluster.submit import IMAGE_CODE_ROOT, INSTANCE_SHAPES, PATH_KEYS, REPO_ROOT, WRITTEN_KEYS, _COMMAND


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
        return [("scale", actors.num_actors, actors.cpus_per_actor, actors.gpus_per_actor)]
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


# --- the cluster files --------------------------------------------------------------------------


def _cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def launcher_groups(config: dict[str, Any]) -> tuple[list[NodeGroup], list[str]]:
    """Node groups of a prepared cluster-launcher config, and problems with their `resources`."""
    docker = config.get("docker") or {}
    mounts = None
    if docker.get("image") or docker.get("head_image"):
        volume = re.compile(r"^(?:-v|--volume)[ =]([^:]+):([^:\s]+)(?::(\S+))?$")
        matches = [volume.match(option.strip()) for option in docker.get("run_options", [])]
        mounts = {m.group(2): "ro" in (m.group(3) or "") for m in matches if m}
    groups, problems = [], []
    for name, node in config["available_node_types"].items():
        kind = node["node_config"].get("InstanceType") or node["node_config"].get("machineType", "")
        resources, is_head = node["resources"], name == config["head_node_type"]
        if kind not in INSTANCE_SHAPES:
            problems.append(f"available_node_types.{name}: unknown instance type {kind!r} (add to INSTANCE_SHAPES)")
            continue
        vcpus, gpus = INSTANCE_SHAPES[kind]
        gpus += sum(a.get("acceleratorCount", 0) for a in node["node_config"].get("guestAccelerators", []))
        if resources.get("GPU", 0) != gpus:
            declared = resources.get("GPU", 0)
            problems.append(f"available_node_types.{name}.resources.GPU is {declared} but {kind} has {gpus}")
        if not 0 <= resources.get("CPU", -1) <= vcpus:
            problems.append(f"available_node_types.{name}.resources.CPU must be set, 0..{vcpus} for {kind}")
        counts = (1, 1) if is_head else (node["min_workers"], node["max_workers"])
        groups.append(NodeGroup(name, resources.get("CPU", 0), resources.get("GPU", 0), *counts, mounts))
    return groups, problems


def check_launcher_file(path: Path) -> list[str]:
    """Ray's own validation of a cluster-launcher YAML, then chimed-ray's cross-checks."""
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    from chimed_ray.cli import STAGES

    try:
        config = prepare_config(copy.deepcopy(yaml.safe_load(path.read_text(encoding="utf-8"))))
        validate_config(config)
    except Exception as exc:  # jsonschema.ValidationError, ValueError, AssertionError
        return [f"{path.name}: Ray's cluster config validation failed: {str(exc).splitlines()[0]}"]
    groups, problems = launcher_groups(config)
    head = config["available_node_types"][config["head_node_type"]]
    started = re.search(r"--num-cpus[= ](\d+)", " ".join(config["head_start_ray_commands"]))
    declared, started = head["resources"].get("CPU"), int(started.group(1)) if started else None
    if (started is not None and started != declared) or (declared == 0 and started is None):
        problems.append(f"head resources CPU={declared} but head_start_ray_commands pass --num-cpus={started}")
    image = (config.get("docker") or {}).get("image", "")
    if image and f":{ray.__version__}-" not in image + "-":
        problems.append(f"docker.image {image} is not Ray {ray.__version__}, the version chimed-ray runs")
    mounts = config["file_mounts"].items()
    repo_dirs = [remote for remote, local in mounts if (REPO_ROOT / local / "pyproject.toml").is_file()]
    for role in ("head_setup_commands", "worker_setup_commands"):
        if not any("pip install" in c and any(d in c for d in repo_dirs) for c in config[role]):
            problems.append(f"{role} never pip-install the repo (file_mounts copies of it: {repo_dirs})")
    problems = [f"{path.name}: {p}" for p in problems]
    commands = commands_in_text(path.read_text(encoding="utf-8"))
    for config_file in sorted(REPO_ROOT.glob("configs/*/gpu*.yaml")):  # every GPU config must fit
        stage = config_file.parent.name.replace("_", "-")
        if stage in STAGES:
            commands.append(f"chimed-ray {stage} --config {config_file.relative_to(REPO_ROOT)}")
    return problems + [p for c in commands for p in check_stage_command(f"{path.name}: `{c}`", c, groups)]


def kuberay_groups(spec: dict[str, Any]) -> list[NodeGroup]:
    """Node groups of a RayCluster spec: Ray resources from rayStartParams, else the Ray container."""

    def group(name: str, group_spec: dict[str, Any], at_start: int, at_most: int) -> NodeGroup:
        container = group_spec["template"]["spec"]["containers"][0]
        resources = container.get("resources", {})
        limits = {**resources.get("requests", {}), **resources.get("limits", {})}
        params = group_spec.get("rayStartParams") or {}
        cpus = _cpu_quantity(params.get("num-cpus", limits.get("cpu", 0)))
        gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        mounts = {m["mountPath"]: bool(m.get("readOnly")) for m in container.get("volumeMounts", [])}
        return NodeGroup(name, cpus, gpus, at_start, at_most, mounts)

    groups = [group("head", spec["headGroupSpec"], 1, 1)]
    for worker in spec.get("workerGroupSpecs", []):
        hosts = worker.get("numOfHosts", 1)
        start = worker.get("replicas", worker.get("minReplicas", 0))
        groups.append(group(worker["groupName"], worker, start * hosts, worker["maxReplicas"] * hosts))
    return groups


def check_ray_cluster_spec(where: str, spec: dict[str, Any]) -> list[str]:
    """Version, GPU and replica consistency of a RayCluster spec (also inside RayJob/RayService)."""
    import ray

    problems = []
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"{where}: rayVersion {spec.get('rayVersion')!r} is not {ray.__version__} (chimed-ray's Ray)")
    for group_spec in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        name = group_spec.get("groupName", "head")
        for container in group_spec["template"]["spec"]["containers"]:
            image = container.get("image", "")
            if spec.get("rayVersion", "?") not in image.rpartition(":")[2]:
                problems.append(f"{where}: {name}/{container['name']} image {image} does not name rayVersion")
            resources = container.get("resources", {})
            limit, request = (resources.get(k, {}).get("nvidia.com/gpu") for k in ("limits", "requests"))
            if request is not None and str(request) != str(limit):
                problems.append(f"{where}: {name}/{container['name']} requests {request} GPUs but limits {limit}")
        low, high = group_spec.get("minReplicas", 0), group_spec.get("maxReplicas", 1)
        if "groupName" in group_spec and not low <= group_spec.get("replicas", low) <= high:
            problems.append(f"{where}: {name}: need minReplicas <= replicas <= maxReplicas")
    return problems


def _unknown_serve_keys(serve: dict[str, Any]) -> list[str]:
    """Keys Serve's schema does not know: Serve ignores them, so a misspelt key silently falls back
    to its default."""
    from ray.serve import schema

    sections = [("", serve, schema.ServeDeploySchema)]
    sections.append(("http_options.", serve.get("http_options") or {}, schema.HTTPOptionsSchema))
    for i, app in enumerate(serve["applications"]):
        sections.append((f"applications[{i}].", app, schema.ServeApplicationSchema))
        for j, deployment in enumerate(app.get("deployments", [])):
            sections.append((f"applications[{i}].deployments[{j}].", deployment, schema.DeploymentSchema))
    return [prefix + key for prefix, section, model in sections for key in sorted(set(section) - set(model.model_fields))]


def check_serve_config(where: str, text: str, groups: list[NodeGroup]) -> list[str]:
    """A RayService's serveConfigV2: Serve's schema, importable apps, chimed-ray args that load and fit."""
    from ray.serve import schema

    try:
        serve = yaml.safe_load(text)
        schema.ServeDeploySchema.model_validate(serve)
    except Exception as exc:
        return [f"{where}: {exc}"]
    problems = [f"{where}: {key}: unknown key" for key in _unknown_serve_keys(serve)]
    for app in serve["applications"]:
        module, _, attr = app["import_path"].partition(":")
        try:
            builder_module = importlib.import_module(module)
            getattr(builder_module, attr)
            args = dict(app.get("args") or {})
            if isinstance(args.get("config"), str):
                args["config"] = str(repo_path(args["config"]))
            config = builder_module.config_from_args(args)
        except Exception as exc:  # ImportError, AttributeError, ConfigError
            problems.append(f"{where}: application {app['name']}: {exc}")
            continue
        port = (serve.get("http_options") or {}).get("port", 8000)
        if port != config.http.port:
            problems.append(f"{where}: http_options.port {port} but the serve config's http.port is {config.http.port}")
        for model in config.models:
            deployment = config.deployment_for(model)
            scaling = deployment.autoscaling
            replicas = scaling.max_replicas if scaling.enabled else deployment.num_replicas
            demand = (f"model {model.served_name()}", replicas, deployment.num_cpus, deployment.num_gpus)
            problems += check_fits(where, [demand], groups, at_start=False)
        problems += check_paths(where, {"models": [{"path": m.path} for m in config.models]}, groups)
    return problems


def check_kuberay_manifest(
    where: str, manifest: dict[str, Any], schema: dict[str, Any], text: str = ""
) -> list[str]:
    """A RayCluster/RayJob/RayService manifest against `schema`, then chimed-ray's cross-checks."""
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: str(e.absolute_path))
    if errors:
        return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    kind, spec = manifest["kind"], manifest["spec"]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
    cluster = cluster[kind]
    groups = kuberay_groups(cluster) if cluster else []
    problems = check_ray_cluster_spec(where, cluster) if cluster else []
    if kind == "RayJob":
        from ray.runtime_env import RuntimeEnv

        try:
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
            unknown = sorted(set(runtime_env) - RuntimeEnv.known_fields)
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r}")
            RuntimeEnv(**runtime_env)
        except Exception as exc:  # YAMLError, TypeError, ValueError
            problems.append(f"{where}: runtimeEnvYAML: {exc}")
        problems += check_stage_command(f"{where}: spec.entrypoint", spec.get("entrypoint", ""), groups)
    if kind == "RayService":
        problems += check_serve_config(f"{where}: serveConfigV2", spec.get("serveConfigV2", ""), groups)
    return problems + [p for c in commands_in_text(text) for p in check_stage_command(f"{where}: `{c}`", c, groups)]


def validate_cluster_files(
    directory: str | Path, kuberay_schema: str | Path | dict[str, Any]
) -> dict[str, list[str]]:
    """Problems of every cluster file under `directory` (YAMLs and docs), keyed by relative path.

    Args:
        directory: the `cluster/` directory.
        kuberay_schema: JSON schema of the KubeRay CRD fields the manifests may use (or its path).
    """
    directory = Path(directory)
    schema = kuberay_schema if isinstance(kuberay_schema, dict) else json.loads(Path(kuberay_schema).read_text())
    results: dict[str, list[str]] = {}
    for path in sorted(directory.rglob("*.yaml")):
        name, text = str(path.relative_to(directory)), path.read_text(encoding="utf-8")
        try:
            docs = [doc for doc in yaml.safe_load_all(text) if doc]
        except yaml.YAMLError as exc:
            results[name] = [f"{name}: {exc}"]
            continue
        if len(docs) == 1 and "provider" in docs[0]:
            results[name] = check_launcher_file(path)
        elif docs and all(str(doc.get("apiVersion", "")).startswith("ray.io/") for doc in docs):
            results[name] = [p for doc in docs for p in check_kuberay_manifest(name, doc, schema, text)]
        else:
            results[name] = [f"{name}: neither a Ray cluster-launcher config nor KubeRay manifests"]
    for path in sorted(directory.rglob("*.md")):
        name = str(path.relative_to(directory))
        commands = commands_in_text(path.read_text(encoding="utf-8"))
        results[name] = [p for c in commands for p in check_stage_command(f"{name}: `{c}`", c, [])]
    return results
