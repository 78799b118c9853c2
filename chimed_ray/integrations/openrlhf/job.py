"""Run the translated command as a Ray job on the current cluster, and bring its result home.

* `require_gpus`: refuse, before anything is submitted, a cluster without (enough) GPUs.
* `submit_and_follow`: `ray.job_submission.JobSubmissionClient` with a runtime env that installs
  `chimed-ray[openrlhf]` where the job's actors run (the GPU nodes), logs streamed as they come.
* `import_checkpoint`: OpenRLHF's final HF save becomes `<output_dir>/final` in safetensors (a LoRA
  adapter is merged into the base first), so eval and serve continue unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
from pathlib import Path
from typing import Callable, Optional

from chimed_ray.config.loader import ConfigError
from chimed_ray.integrations.openrlhf.flags import OPENRLHF_VERSION
from chimed_ray.utils.files import InputError, atomic_directory

HF_CONFIG_FILES = ("config.json", "generation_config.json")


class OpenRLHFJobError(RuntimeError):
    """The submitted OpenRLHF job did not succeed; the message has its id, status and reason."""


def cluster_gpus() -> tuple[float, int]:
    """`(GPUs in the cluster, most GPUs on one alive node)`."""
    import ray

    per_node = [node.get("Resources", {}).get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return float(ray.cluster_resources().get("GPU", 0.0)), int(max(per_node, default=0.0))


def require_gpus(total: float, needed: int) -> None:
    if total <= 0:
        raise ConfigError("engine=openrlhf: this Ray cluster has no GPUs; OpenRLHF trains on GPUs only "
                          "(use engine=chimed_ray on CPU)")
    if total < needed:
        raise ConfigError(f"engine=openrlhf: the run needs {needed} GPUs and this Ray cluster has {total:g}; "
                          "lower scale.*.num_workers or add nodes")


def runtime_env(extra_env: Optional[dict[str, str]] = None) -> dict:
    """Installs chimed-ray with OpenRLHF on the nodes that run the job (pip_check off: OpenRLHF pins
    exact ray/transformers/deepspeed versions that the cluster image should already match)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        requirement = f"chimed-ray[openrlhf]=={version('chimed-ray')}"
    except PackageNotFoundError:
        requirement = "chimed-ray[openrlhf]"
    return {"pip": {"packages": [requirement, f"openrlhf=={OPENRLHF_VERSION}"], "pip_check": False},
            "env_vars": {"TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}}


def submit_and_follow(argv: list[str], env: dict, job_name: str, echo: Callable[[str], None] = print,
                      address: Optional[str] = None) -> str:
    """Submit `argv` as a Ray job, stream its logs until it ends; returns its submission id or raises
    OpenRLHFJobError."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(argv), runtime_env=env, entrypoint_num_cpus=1,
                               metadata={"chimed_ray": job_name})
    echo(f"[chimed-ray ppo] submitted OpenRLHF job {job_id}; following its logs")

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    asyncio.run(follow())
    info = client.get_job_info(job_id)
    if info.status != JobStatus.SUCCEEDED:
        reason = (info.message or "").strip().splitlines()[-1:] or ["see the log above"]
        raise OpenRLHFJobError(f"OpenRLHF job {job_id} ended {info.status.value}: {reason[0]}")
    return job_id


def import_checkpoint(saved: Path, base_model: str, tokenizer, target: Path) -> Path:
    """OpenRLHF's HF save at `saved` as an HF directory `target` with safetensors weights only."""
    if not saved.is_dir():
        raise InputError(f"OpenRLHF finished but left no model at {saved}")
    with atomic_directory(target) as tmp:
        if (saved / "adapter_config.json").is_file() and not _weight_files(saved):
            _merge_adapter(base_model, saved, tmp)
        else:
            for name in HF_CONFIG_FILES:
                if (saved / name).is_file():
                    shutil.copy2(saved / name, tmp / name)
            _copy_weights_as_safetensors(saved, tmp)
        tokenizer.save_pretrained(str(tmp))
    return target


def _weight_files(directory: Path) -> list[Path]:
    """Full-model weights in HF's names (a LoRA save has only `adapter_model.*`)."""
    return sorted(directory.glob("model*.safetensors")) + sorted(directory.glob("pytorch_model*.bin"))


def _copy_weights_as_safetensors(saved: Path, target: Path) -> None:
    import torch
    from safetensors.torch import save_file

    files = _weight_files(saved)
    if not files:
        raise InputError(f"OpenRLHF's save {saved} holds no weights (model*.safetensors or pytorch_model*.bin)")
    renamed = {}
    for path in files:
        if path.suffix == ".safetensors":
            shutil.copy2(path, target / path.name)
            continue
        name = path.name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        state = torch.load(path, map_location="cpu", weights_only=True)
        save_file({key: value.contiguous() for key, value in state.items()}, str(target / name), metadata={"format": "pt"})
        renamed[path.name] = name
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (saved / index).is_file():
            data = json.loads((saved / index).read_text(encoding="utf-8"))
            data["weight_map"] = {key: renamed.get(file, file) for key, file in data.get("weight_map", {}).items()}
            (target / "model.safetensors.index.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def _merge_adapter(base_model: str, adapter: Path, target: Path) -> None:
    """A LoRA run saves its adapter: merge it into the base model (as our engine's final does)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(target), safe_serialization=True)
    shutil.copytree(adapter, target / "adapter")
