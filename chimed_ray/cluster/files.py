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
from pathlib import Path
from typing import Any

import yaml

from chimed_ray.cluster.checks import NodeGroup, check_fits, check_paths, check_stage_command, commands_in_text, repo_path
from chimed_ray.cluster.submit import INSTANCE_SHAPES, REPO_ROOT


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
