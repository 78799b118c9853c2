"""The first thing to run on a GPU machine: one command, one table, at most ~8 minutes on one
80-140 GB GPU. Skipped (one line, exit 0) without CUDA; not part of CI.

    make install && pip install vllm      # vLLM is optional: its rows say "not installed" without it
    python benchmarks/gpu_check.py [--steps 12] [--ppo-steps 3] [--requests 96]

It builds a ~0.5B LLaMA from config (28 layers x 1024, the bundled tokenizer; no download) and
measures, side by side:

* SFT steps under our DeepSpeed set-up (ZeRO-2, bf16): tokens/s and MFU (peak bf16 FLOPs from
  the device name, or GPU_PEAK_TFLOPS);
* PPO steps (GRPO, every role colocated on the GPU) with the HF engine, and with vLLM + collective
  weight sync when vLLM is installed: rollout tokens/s against plain HF `generate` at the same batch;
* the serving app at 32 concurrent requests, HF engine vs vLLM engine: requests/s;
* the memory plan (`chimed-ray plan --json`) against `torch.cuda.max_memory_allocated` for each
  phase run in this process (SFT train step; PPO generate, score and train step). Without the plan
  command the column says "plan unavailable".

`--cpu-smoke` runs the same code on CPU with a tiny model (fp32, no vLLM) to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
RULE_REWARD = "chimed_ray.rollout.rule_rewards:token_parity"
# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"B200": 2250.0, "H200": 989.0, "H100": 989.0, "H800": 989.0, "H20": 148.0, "A100": 312.0,
               "A800": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
SHAPES = {  # ~0.48B parameters with the bundled 6k vocabulary
    "gpu": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 16, "max_position_embeddings": 2048},
    "cpu": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512},
}


@dataclass
class Setup:
    """Shapes of one check; the GPU defaults fill an 80 GB card a fraction, and finish in minutes."""

    device: str
    checkpoint: Path
    work: Path
    sft_micro_batch: int = 8
    sft_length: int = 1024
    prompts: int = 16
    samples: int = 4
    max_new_tokens: int = 256
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (what, ours, comparison)
    memory: dict[str, float] = field(default_factory=dict)  # phase -> measured GB

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def batch(self) -> int:
        return self.prompts * self.samples


# ------------------------------------------------------------------------------------------ model


def build_checkpoint(directory: Path, shape: str) -> tuple[Path, int]:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    model = build_causal_lm("", TinyModelConfig(**SHAPES[shape]), tokenizer, seed=0)
    parameters = sum(p.numel() for p in model.parameters())
    return save_hf_checkpoint(model, tokenizer, directory / "model"), parameters


def peak_tflops() -> Optional[float]:
    import torch

    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"])
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((peak for fragment, peak in PEAK_TFLOPS.items() if fragment in name), None)


def measured(setup: Setup, phase: str, run: Callable[[], Any]) -> Any:
    """Run one in-process phase and record its peak allocated memory (GB)."""
    import torch

    if setup.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = run()
    if setup.gpu:
        torch.cuda.synchronize()
        setup.memory[phase] = torch.cuda.max_memory_allocated() / 2**30
    return result


# ------------------------------------------------------------------------- in-process phases


def in_process_phases(setup: Setup, parameters: int, steps: int) -> float:
    """SFT steps (ZeRO-2) then one PPO generate/score/train round on the same engine; returns the
    plain HF generate tokens/s at the PPO batch."""
    import torch
    import torch.distributed as dist

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.models import load_causal_lm
    from chimed_ray.trainers.engine import initialize

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)  # what a launcher would set; DeepSpeed reads them
    if not dist.is_initialized():
        dist.init_process_group("nccl" if setup.gpu else "gloo", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
    scale = ScaleConfig(num_workers=1, use_gpu=setup.gpu, zero_stage=2, precision="bf16" if setup.gpu else "fp32",
                        check_cluster=False)
    optim = OptimConfig(lr=1e-5, warmup_ratio=0.0, micro_batch_size=setup.sft_micro_batch)
    model = load_causal_lm(str(setup.checkpoint), "fp32").to(setup.device)
    engine = initialize(model, optim, scale, steps + 2)
    sft_rate = measured(setup, "sft train step", lambda: sft_steps(engine, setup, steps))
    flops = 6 * parameters + 12 * model.config.num_hidden_layers * model.config.hidden_size * setup.sft_length
    peak = peak_tflops() if setup.gpu else None
    mfu = f"MFU {100 * flops * sft_rate / (peak * 1e12):.1f}% of {peak:g} TFLOP/s" if peak else "MFU n/a (set GPU_PEAK_TFLOPS)"
    setup.rows.append(("SFT step, ZeRO-2 " + ("bf16" if setup.gpu else "fp32"), f"{sft_rate:,.0f} tokens/s", mfu))
    plain_rate = ppo_round(engine, setup)
    del engine, model
    if setup.gpu:
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return plain_rate


def sft_steps(engine, setup: Setup, steps: int) -> float:
    """Tokens/s of `steps` optimizer steps on random tokens, after one warm-up step."""
    import torch

    vocab = engine.module.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (setup.sft_micro_batch, setup.sft_length), generator=generator).to(setup.device)
               for _ in range(steps + 1)]
    for index, ids in enumerate(batches):
        if index == 1:
            if setup.gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    if setup.gpu:
        torch.cuda.synchronize()
    return steps * setup.sft_micro_batch * setup.sft_length / (time.perf_counter() - started)


def rollout_prompts(setup: Setup) -> list[list[int]]:
    from chimed_ray.config import DataConfig
    from chimed_ray.models import load_tokenizer
    from chimed_ray.rollout.prompts import load_prompts

    prompts = load_prompts(DataConfig(), load_tokenizer(str(setup.checkpoint)), 128, setup.prompts)
    return [prompt.token_ids for prompt in prompts for _ in range(setup.samples)]


def ppo_round(engine, setup: Setup) -> float:
    """Plain HF generate (timed) -> old log-probs -> one PPO step, each phase's memory recorded."""
    import torch

    from chimed_ray.algorithms import ppo_clip
    from chimed_ray.distributed.batch import Experience, build_rollout_batch
    from chimed_ray.distributed.forward import no_grad_in_micro_batches, response_logprobs
    from chimed_ray.distributed.policy import eos_token_ids
    from chimed_ray.models import load_tokenizer
    from chimed_ray.data.padding import left_pad

    tokenizer = load_tokenizer(str(setup.checkpoint))
    prompts = rollout_prompts(setup)
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, torch.device(setup.device))
    model = engine.module.eval()

    def generate():
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=setup.max_new_tokens, do_sample=True,
                                 temperature=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos_token_ids(tokenizer))
        if setup.gpu:
            torch.cuda.synchronize()
        answers = out[:, ids.shape[1]:].tolist()
        return answers, time.perf_counter() - started

    with torch.no_grad():  # warm-up (kernels, allocator), as the PPO runs' first step is skipped too
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True,
                       pad_token_id=tokenizer.pad_token_id)
    answers, seconds = measured(setup, "ppo generate (HF, batch %d)" % setup.batch, generate)
    batch = build_rollout_batch(prompts, answers, list(range(len(prompts))), tokenizer.pad_token_id, eos_token_ids(tokenizer))
    plain_rate = float(batch.response_mask.sum()) / seconds
    old = measured(setup, "ppo score (log-probs)", lambda: no_grad_in_micro_batches(
        lambda micro: response_logprobs(model, micro.to(setup.device))[0], batch, setup.sft_micro_batch))
    experience = Experience(batch.sequences, batch.attention_mask, batch.response_mask, batch.group_ids,
                            old_logprobs=old.cpu(), advantages=batch.response_mask.float())
    model.train()

    def train():
        for micro in experience.micro_batches(setup.sft_micro_batch):
            micro = micro.to(setup.device)
            logprobs, _ = response_logprobs(engine, micro)
            loss, _ = ppo_clip(logprobs, micro.old_logprobs, micro.advantages, micro.response_mask)
            engine.backward(loss)
            engine.step()

    measured(setup, "ppo train step (policy)", train)
    return plain_rate


# ------------------------------------------------------------------------------- real stages


def ppo_stage(setup: Setup, engine: str, steps: int) -> tuple[float, float, float]:
    """`run_ppo` with every role colocated on the GPU: (samples/s, rollout tokens/s, sync s)."""
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig
    from chimed_ray.trainers.ppo import run_ppo
    from chimed_ray.utils.tracking import read_metrics

    output = setup.work / f"ppo_{engine}"
    share = 0.2 if setup.gpu else 1.0
    overrides = [
        f"output_dir={output}", f"model.path={setup.checkpoint}", f"reward.function={RULE_REWARD}", f"total_steps={steps}",
        "algorithm.advantage_estimator=grpo", "algorithm.kl_coef=0.01", f"algorithm.mini_batch_size={setup.batch}",
        f"rollout.prompts_per_step={setup.prompts}", f"rollout.samples_per_prompt={setup.samples}",
        f"rollout.max_new_tokens={setup.max_new_tokens}", "rollout.max_prompt_length=128",
        f"optim.micro_batch_size={setup.sft_micro_batch}", "optim.warmup_ratio=0", "optim.lr=1e-6",
        "scale.placement=colocate", f"scale.use_gpu={str(setup.gpu).lower()}", "scale.memory_check=false",
        f"scale.policy.gpus_per_worker={2 * share}", f"scale.reference.gpus_per_worker={share}",
        f"scale.reward.gpus_per_worker={share}", "logging.progress_bar=false", "logging.tensorboard=false",
    ] + ([] if setup.gpu else [f"scale.{role}.cpus_per_worker=0.25" for role in ("policy", "reference", "reward")])
    if engine == "vllm":
        overrides += ["rollout.engine=vllm", "rollout.separate_engine=true", "rollout.weight_sync=collective",
                      "scale.rollout.num_workers=1", f"scale.rollout.gpus_per_worker={share}",
                      "rollout.vllm_gpu_memory_utilization=0.2"]
    run_ppo(load_config(PPOConfig, None, overrides))
    records = read_metrics(output / "metrics.jsonl")[1:] or read_metrics(output / "metrics.jsonl")

    def mean(key: str) -> float:
        return statistics.mean(record.get(key, 0.0) for record in records)

    return setup.batch / mean("time/step_s"), mean("throughput/generate_tokens_per_s"), mean("time/sync_s")


def serve_rate(setup: Setup, engine: str, requests: int, concurrency: int = 32) -> float:
    """Requests/s of the serving app at `concurrency` concurrent chat requests."""
    import asyncio

    from chimed_ray.config.loader import load_config
    from chimed_ray.config.serve import ServeConfig
    from chimed_ray.serving import shutdown_server, start_server

    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_load import load  # the same load generator as benchmarks/serve_load.py

    overrides = [f"models={json.dumps([{'name': 'bench', 'path': str(setup.checkpoint)}])}", f"engine.engine={engine}",
                 f"batching.max_batch_size={concurrency}", f"deployment.max_ongoing_requests={concurrency * 2}",
                 f"deployment.num_gpus={1 if setup.gpu else 0}", "http.port=8765", "http.app_name=gpu-check",
                 "log_requests=false"]
    if engine == "vllm":
        overrides.append('engine.vllm_kwargs={"gpu_memory_utilization": 0.5}')
    config = load_config(ServeConfig, REPO / "configs" / "serve" / "tiny.yaml", overrides)
    url = start_server(config)
    try:
        return asyncio.run(load(url, requests, concurrency, 128))["requests_per_s"]
    finally:
        shutdown_server(config.http.app_name)


# ------------------------------------------------------------------------------ memory plan


def plan_prediction(stage: str, config, work: Path) -> Optional[dict]:
    """`chimed-ray plan --json` on `config` (written to a YAML), or None if the command is missing."""
    from chimed_ray.config import dump_config

    path = work / f"{stage}_plan.yaml"
    dump_config(config, path)
    done = subprocess.run([sys.executable, "-m", "chimed_ray", "plan", "--config", str(path), "--json"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        return json.loads(done.stdout) if done.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def predicted_gb(plan: Optional[dict], role: Optional[str], phase: str, parts: tuple[str, ...]) -> str:
    """The plan's per-GPU total for `role` (first role when None) in `phase` ("train" also matches
    "train:policy"); without per-phase figures, the sum of `parts`. "plan unavailable" without a plan."""
    if not plan or not plan.get("roles"):
        return "plan unavailable"
    roles = plan["roles"]
    figures = roles.get(role) if role else next(iter(roles.values()))
    if not figures:
        return f"plan has no {role} role"
    phases = figures.get("phases", {})
    match = next((name for name in phases if name == phase or name.split(":")[0] == phase), None)
    if match is not None:
        return f"{phases[match]['total']:.1f} GB"
    return f"{sum(figures['per_gpu_gb'].get(part, 0.0) for part in parts):.1f} GB"


def memory_rows(setup: Setup) -> list[tuple[str, str, str]]:
    from chimed_ray.config import SFTConfig, load_config
    from chimed_ray.config.rlhf import PPOConfig

    gpu = str(setup.gpu).lower()
    sft = load_config(SFTConfig, REPO / "configs" / "sft" / "tiny.yaml", [
        f"model.path={setup.checkpoint}", f"optim.micro_batch_size={setup.sft_micro_batch}",
        f"data.max_length={setup.sft_length}", f"scale.use_gpu={gpu}", "scale.zero_stage=2", "scale.num_workers=1"])
    ppo = load_config(PPOConfig, None, [
        f"model.path={setup.checkpoint}", f"reward.function={RULE_REWARD}", "algorithm.advantage_estimator=grpo",
        f"rollout.prompts_per_step={setup.prompts}", f"rollout.samples_per_prompt={setup.samples}",
        f"algorithm.mini_batch_size={setup.batch}", f"optim.micro_batch_size={setup.sft_micro_batch}",
        f"rollout.max_new_tokens={setup.max_new_tokens}", "rollout.max_prompt_length=128", f"scale.use_gpu={gpu}",
        "scale.policy.num_workers=1"])
    sft_plan, ppo_plan = plan_prediction("sft", sft, setup.work), plan_prediction("ppo", ppo, setup.work)
    wanted = {
        "sft train step": (sft_plan, None, "train", ("peak",)),
        f"ppo generate (HF, batch {setup.batch})": (ppo_plan, "policy", "generate", ("model_states", "kv_cache")),
        "ppo score (log-probs)": (ppo_plan, "policy", "score", ("model_states", "logits")),
        "ppo train step (policy)": (ppo_plan, "policy", "train", ("peak",)),
    }
    return [(f"memory: {phase}", f"{setup.memory[phase]:.1f} GB measured" if phase in setup.memory else "n/a on CPU",
             f"predicted {predicted_gb(*wanted[phase])}") for phase in wanted]


# ------------------------------------------------------------------------------------- driver


def print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="SFT optimizer steps timed")
    parser.add_argument("--ppo-steps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--cpu-smoke", action="store_true", help="run the script's code on CPU with a tiny model")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_check: skipped (no CUDA device)")
        return 0
    try:
        import vllm  # noqa: F401

        have_vllm = torch.cuda.is_available()
    except ImportError:
        have_vllm = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        shape = "cpu" if args.cpu_smoke else "gpu"
        checkpoint, parameters = build_checkpoint(Path(tmp), shape)
        setup = Setup("cpu" if args.cpu_smoke else "cuda", checkpoint, Path(tmp))
        if args.cpu_smoke:
            setup.sft_micro_batch, setup.sft_length, setup.prompts, setup.samples, setup.max_new_tokens = 2, 64, 2, 2, 8
        plain = in_process_phases(setup, parameters, args.steps)
        for engine in ("hf", "vllm"):
            if engine == "vllm" and not have_vllm:
                setup.rows.append(("PPO step, vllm + collective sync", "vLLM not installed", "pip install vllm"))
                continue
            samples, rollout, sync = ppo_stage(setup, engine, args.ppo_steps)
            label = "PPO step, hf engine" if engine == "hf" else "PPO step, vllm + collective sync"
            setup.rows.append((label, f"{samples:.2f} samples/s, rollout {rollout:,.0f} tokens/s",
                               f"plain HF generate {plain:,.0f} tokens/s (batch {setup.batch})"
                               + (f", sync {sync:.2f} s" if engine == "vllm" else "")))
        hf_rate = serve_rate(setup, "hf", args.requests)
        vllm_rate = f"vllm {serve_rate(setup, 'vllm', args.requests):.1f} req/s" if have_vllm else "vllm not installed"
        setup.rows.append(("serve, 32 concurrent", f"hf {hf_rate:.1f} req/s", vllm_rate))
        setup.rows += memory_rows(setup)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu_smoke else "CPU (smoke run)"
    print(f"\ngpu_check on {name}: {parameters / 1e6:,.0f}M-parameter LLaMA, {time.perf_counter() - started:.0f} s")
    print_table([("what", "ours", "against")] + setup.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
