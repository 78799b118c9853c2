"""Every file in cluster/ passes the validation its tool runs (Ray's `ray up` config validation for
launcher YAMLs, the KubeRay CRD schema for manifests) and chimed-ray's cross-checks; and each check
catches the mistake it exists for, shown on a broken copy of a real file."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from chimed_ray.cluster import (
    check_kuberay_manifest,
    check_launcher_file,
    commands_in_text,
    parse_stage_command,
    validate_cluster_files,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SCHEMA_FILE = Path(__file__).resolve().parent / "kuberay_schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
FILES = sorted(str(p.relative_to(CLUSTER)) for p in [*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.md")])


@pytest.fixture(scope="module")
def results() -> dict[str, list[str]]:
    return validate_cluster_files(CLUSTER, SCHEMA_FILE)


def test_cluster_directory_has_launcher_and_kuberay_files():
    kuberay = {"kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml"}
    assert {"aws.yaml", "gcp.yaml", "README.md", *kuberay} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_is_valid(results, name):
    assert results[name] == []


def test_kuberay_schema_is_a_small_valid_draft7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA_FILE.stat().st_size < 200_000


def _stage_commands() -> list[str]:
    commands = [c for name in FILES for c in commands_in_text((CLUSTER / name).read_text())]
    job = yaml.safe_load((CLUSTER / "kuberay/rayjob.yaml").read_text())
    return commands + [job["spec"]["entrypoint"]]


@pytest.mark.parametrize("command", _stage_commands())
def test_training_commands_load_as_typed_configs(command):
    """Beyond the plain YAML merge of the cross-checks: overrides name real keys of the stage config."""
    from chimed_ray.cli import stage_config_class
    from chimed_ray.config import load_config

    run = parse_stage_command(command)
    load_config(stage_config_class(run.stage), run.config_file, run.overrides)


# --- each check catches its mistake on a broken copy -------------------------------------------


def _launcher_problems(tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> list[str]:
    config = yaml.safe_load((CLUSTER / name).read_text())
    edit(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return check_launcher_file(path)


def _gpu_node(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"]["gpu_a100x8"]


LAUNCHER_MISTAKES = {  # what goes wrong: (file, edit, expected problem)
    "misspelt key": (
        "aws.yaml", lambda c: _gpu_node(c).update(max_worker=4), "Ray's cluster config validation failed",
    ),
    "GPU count": ("aws.yaml", lambda c: _gpu_node(c)["resources"].update(GPU=4), "GPU is 4 but p4d.24xlarge has 8"),
    "GPU count gcp": ("gcp.yaml", lambda c: _gpu_node(c)["resources"].update(GPU=16), "GPU is 16 but a2-highgpu-8g has 8"),
    "no GPU node at start": ("aws.yaml", lambda c: _gpu_node(c).update(min_workers=0), "holds 0 at start"),
    "head schedules work": (
        "gcp.yaml", lambda c: c.update(head_start_ray_commands=["ray start --head --port=6379"]), "--num-cpus=None",
    ),
    "other Ray": ("aws.yaml", lambda c: c["docker"].update(image="rayproject/ray:2.50.0-py311-gpu"), "is not Ray"),
    "repo not installed": ("aws.yaml", lambda c: c.update(setup_commands=[]), "never pip-install the repo"),
    "models not mounted": (
        "aws.yaml", lambda c: c["docker"]["run_options"].remove("-v /mnt/models:/mnt/models"),
        "model.path=/mnt/models/Ziya2-13B is not on a volume",
    ),
}


@pytest.mark.parametrize("mistake", LAUNCHER_MISTAKES)
def test_launcher_checks_catch(tmp_path, mistake):
    name, edit, expected = LAUNCHER_MISTAKES[mistake]
    problems = _launcher_problems(tmp_path, name, edit)
    assert any(expected in p for p in problems), problems


def _cluster(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    return _cluster(job)["workerGroupSpecs"][0]


def _container(job: dict[str, Any], group: str = "worker") -> dict[str, Any]:
    spec = _worker(job) if group == "worker" else _cluster(job)["headGroupSpec"]
    return spec["template"]["spec"]["containers"][0]


def _gpus(job: dict[str, Any], limit: str, request: str) -> None:
    resources = _container(job)["resources"]
    resources["limits"]["nvidia.com/gpu"], resources["requests"]["nvidia.com/gpu"] = limit, request


def _entrypoint(job: dict[str, Any], command: str) -> None:
    job["spec"]["entrypoint"] = command


def _serve(service: dict[str, Any], **changes: Any) -> None:
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    for key, value in changes.items():
        target = serve if key == "http_options" else serve["applications"][0]
        target[key] = value
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)


SFT = "chimed-ray sft --config /home/ray/chimed-ray/configs/sft/gpu_13b.yaml"
KUBERAY_MISTAKES = {  # what goes wrong: (manifest, edit, expected problem)
    "number in rayStartParams": (
        "rayjob", lambda j: _cluster(j)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "0 is not of type 'string'",
    ),
    "misspelt key": ("rayjob", lambda j: _worker(j).update(maxReplica=1), "'maxReplica' was unexpected"),
    "missing config": ("rayjob", lambda j: _entrypoint(j, "chimed-ray sft --config configs/sft/no.yaml"), "not in the repo"),
    "unknown stage": ("rayjob", lambda j: _entrypoint(j, SFT.replace(" sft ", " tune ")), "unknown stage 'tune'"),
    "bad scale override": ("rayjob", lambda j: _entrypoint(j, SFT + " scale.num_worker=8"), "scale.num_worker: unknown key"),
    "too few GPUs": ("rayjob", lambda j: _gpus(j, "4", "4"), "8 workers x (8 CPU, 1 GPU) but the cluster holds 4"),
    "GPU request is not the limit": ("rayjob", lambda j: _gpus(j, "8", "4"), "requests 4 GPUs but limits 8"),
    "data not mounted on workers": (
        "rayjob", lambda j: _container(j)["volumeMounts"].pop(0), "is not on a volume mounted by gpu-a100x8",
    ),
    "output read-only on the driver": (
        "rayjob", lambda j: _container(j, "head")["volumeMounts"][0].update(readOnly=True),
        "is written but head mounts it read-only",
    ),
    "other Ray": ("rayjob", lambda j: _cluster(j).update(rayVersion="2.50.0"), "rayVersion '2.50.0' is not"),
    "runtime env typo": ("rayjob", lambda j: j["spec"].update(runtimeEnvYAML="env_var: {A: b}"), "unknown field 'env_var'"),
    "runtime env type": ("rayjob", lambda j: j["spec"].update(runtimeEnvYAML="env_vars: {A: 1}"), "Dict[str, str]"),
    "wrong import path": (
        "rayservice", lambda s: _serve(s, import_path="chimed_ray.serving.app:no_such_builder"), "no_such_builder",
    ),
    "serve schema": ("rayservice", lambda s: _serve(s, import_path="no_colon"), "serveConfigV2"),
    "serve typo": ("rayservice", lambda s: _serve(s, route_prefx="/"), "applications[0].route_prefx: unknown key"),
    "port differs": ("rayservice", lambda s: _serve(s, http_options={"port": 9000}), "http_options.port 9000"),
    "too few serving pods": (
        "rayservice", lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas=2),
        "4 workers x (4 CPU, 1 GPU) but the cluster holds 2",
    ),
}


@pytest.mark.parametrize("mistake", KUBERAY_MISTAKES)
def test_kuberay_checks_catch(mistake):
    name, edit, expected = KUBERAY_MISTAKES[mistake]
    manifest = yaml.safe_load((CLUSTER / "kuberay" / f"{name}.yaml").read_text())
    broken = copy.deepcopy(manifest)
    edit(broken)
    assert check_kuberay_manifest(name, manifest, SCHEMA) == []
    problems = check_kuberay_manifest(name, broken, SCHEMA)
    assert any(expected in p for p in problems), problems
