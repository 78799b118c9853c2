"""Measure, in a fresh process, the peak RSS increase of training steps and generations of
randomly initialised LLaMA models on CPU in fp32; prints a JSON list, one figure per job.

`python memory_probe.py '[{"model_dir": D, "mode": "train", "rows": 4, "tokens": 256, "checkpointing": false,
                           "dtype": "fp32", "optimizer": true},
                          {"model_dir": D, "mode": "generate", "rows": 8, "prompt_tokens": 128, "new_tokens": 64}]'`

Before each job the current RSS is taken as the baseline and, once the model is built, the peak
counter is reset (`/proc/self/clear_refs`), so the increase is what the weights, the optimizer and
the step add: what the memory plan predicts for a CPU worker. Run with MALLOC_MMAP_THRESHOLD_ fixed so freed tensors leave the
process instead of staying in glibc's heap for the next job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def warm_up() -> None:
    """Run a throwaway micro model once so one-off library initialisation (oneDNN, sdpa dispatch,
    generation utilities) lands before any baseline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    warm = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=128))
    ids = torch.randint(3, 128, (1, 8))
    warm(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        warm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                      do_sample=True, pad_token_id=0, eos_token_id=None)


def measure(job: dict) -> int:
    """Peak RSS increase of `job` (train: two AdamW steps, gradients kept as DeepSpeed keeps its
    gradient buffers; generate: one sampled generation of exactly `new_tokens`)."""
    import gc

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(job["model_dir"])
    config._attn_implementation = "sdpa"
    gc.collect()
    baseline = _status("VmRSS")
    model = LlamaForCausalLM(config).to(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[job.get("dtype", "fp32")]))
    # Building from a config allocates an untied LM head before tying it, a transient a run that
    # loads a checkpoint never has: the peak counts from here, the weights from the baseline.
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    rows = job["rows"]
    if job["mode"] == "train":
        if job["checkpointing"]:
            model.gradient_checkpointing_enable()
        model.train()
        # bf16 runs forward and backward only: torch's AdamW on bf16 weights keeps no fp32 masters,
        # so DeepSpeed's mixed-precision states cannot be reproduced without DeepSpeed.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if job.get("optimizer", True) else None
        for _ in range(2):
            ids = torch.randint(0, config.vocab_size, (rows, job["tokens"]))
            model(input_ids=ids, labels=ids).loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
        del optimizer
    else:
        model.eval()
        ids = torch.randint(3, config.vocab_size, (rows, job["prompt_tokens"]))
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=job["new_tokens"],
                           min_new_tokens=job["new_tokens"], do_sample=True, pad_token_id=0, eos_token_id=None)
    peak = _status("VmHWM") - baseline
    del model
    gc.collect()
    return peak


def main() -> None:
    import torch

    torch.set_num_threads(1)
    jobs = json.loads(sys.argv[1])
    warm_up()
    print(json.dumps([measure(job) for job in jobs]))


if __name__ == "__main__":
    main()
