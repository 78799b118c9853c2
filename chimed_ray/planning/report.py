"""The plan as a readable table (rich) or one JSON object, and the one-line refusal stages print."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from chimed_ray.planning.plan import Footprint, MemoryPlan, RolePlan, gib

COLUMNS = [f.name for f in fields(Footprint)]
# The per-role summary's components, each the largest over the role's phases.
SUMMARY_KEYS = ("model_states", "activations", "logits", "kv_cache", "gathered", "buffers", "reserved")


def role_json(role: RolePlan) -> dict[str, Any]:
    """`{"num_gpus", "per_gpu_gb": {component: max over phases, "peak": max phase total}, ...}`."""
    on_device = {phase: role.on_device(phase) for phase in role.phases}
    per_gpu = {key: gib(max(getattr(f, key) for f in on_device.values())) for key in SUMMARY_KEYS}
    peak_phase, peak = role.peak()
    per_gpu["peak"] = gib(peak)
    phases = {phase: {**{key: gib(getattr(f, key)) for key in COLUMNS}, "model_states": gib(f.model_states),
                      "total": gib(f.total)} for phase, f in on_device.items()}
    return {"num_gpus": role.num_devices, "num_workers": role.num_workers,
            "workers_per_gpu": role.workers_per_device, "per_gpu_gb": per_gpu, "peak_phase": peak_phase,
            "host_gb_per_node": gib(role.host_bytes), "phases": phases, "notes": role.notes}


def plan_json(plan: MemoryPlan, advice: list[str]) -> dict[str, Any]:
    """The whole plan as one JSON-ready mapping (the `--json` output)."""
    worst = plan.worst()
    return {
        "stage": plan.stage, "device": plan.device, "fits": plan.fits, "applies": plan.applies,
        "gpu_memory_gb": plan.budget_gb, "peak_gb": gib(worst.bytes),
        "peak": {"roles": list(worst.roles), "phase": worst.phase, "gb": gib(worst.bytes)},
        "roles": {name: role_json(role) for name, role in plan.roles.items()},
        "devices": [{"roles": list(p.roles), "phase": p.phase, "peak_gb": gib(p.bytes)} for p in plan.device_peaks()],
        "advice": advice, "notes": plan.notes,
    }


def verdict(plan: MemoryPlan) -> str:
    worst = plan.worst()
    where = f"{'+'.join(worst.roles)} in {worst.phase}"
    if not plan.applies:
        return (f"CPU run: figures are host RAM per worker process (peak {gib(worst.bytes):.2f} GB, {where}); "
                "the GPU budget does not apply")
    head = "FITS" if plan.fits else "DOES NOT FIT"
    problems = "; ".join(plan.problems)
    return (f"{head}: peak {gib(worst.bytes):.1f} GB per GPU ({where}) vs scale.gpu_memory_gb={plan.budget_gb:g}"
            + (f"; {problems}" if problems else ""))


def refusal(plan: MemoryPlan, advice: list[str], budget_key: str) -> str:
    """One line for a stage that will not start: the peak, the budget and the fix."""
    worst = plan.worst()
    fix = f"fix: {advice[0]}" if advice else "no change the plan tried fits (more GPUs, ZeRO-3, offload, smaller batches)"
    problems = f" ({'; '.join(plan.problems)})" if plan.problems else ""
    verb = "needs" if len(worst.roles) == 1 else "need"
    return (f"memory plan: {'+'.join(worst.roles)} {verb} {gib(worst.bytes):.1f} GB per GPU in {worst.phase}, over "
            f"{budget_key}={plan.budget_gb:g}{problems}; {fix} (`chimed-ray plan` prints the table; "
            f"{budget_key.replace('gpu_memory_gb', 'memory_check')}=false runs anyway)")


def print_table(plan: MemoryPlan, advice: list[str], title: str) -> None:
    """Per role, per phase, GB on one of its GPUs, then the device peaks, verdict and advice."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    unit = "GB per GPU" if plan.applies else "GB host RAM per worker"
    table = Table(title=f"{title} ({unit})", show_lines=False)
    for header in ("role", "GPUs", "phase", "params", "grads", "optim", "gathered", "activ", "logits", "kv",
                   "buffers", "reserved", "total"):
        table.add_column(header, justify="left" if header in ("role", "phase") else "right")
    for name, role in plan.roles.items():
        peak_phase, _ = role.peak()
        for index, phase in enumerate(plan.phases):
            f = role.on_device(phase)
            cells = [gib(getattr(f, key)) for key in COLUMNS]
            total = f"{gib(f.total):.2f}" + (" *" if phase == peak_phase else "")
            table.add_row(name if index == 0 else "", str(role.num_devices) if index == 0 else "", phase,
                          *(f"{c:.2f}" for c in cells), total)
        table.add_section()
    console.print(table)
    for peak in plan.device_peaks():
        shared = " (on shared GPUs)" if len(peak.roles) > 1 else ""
        console.print(f"  {'+'.join(peak.roles)}{shared}: peak {gib(peak.bytes):.2f} GB in {peak.phase}")
    for note in plan.notes:
        console.print(f"  note: {note}")
    console.print(verdict(plan))
    for item in advice:
        console.print(f"  advice: {item}")
