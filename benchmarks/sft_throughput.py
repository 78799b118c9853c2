"""SFT tokens/s on CPU: our Ray Train + DeepSpeed path vs a plain single-process HF `Trainer`,
same tiny model, same tokenized data, same global batch, printed side by side.

    python benchmarks/sft_throughput.py [--steps 30] [--workers 2]

Tokens/s counts every non-pad input token of the optimizer steps after a warm-up, measured
inside the training loop (Ray start-up and DeepSpeed init are reported separately as wall time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sft" / "tiny.yaml"


def ours(steps: int, workers: int, output_dir: Path) -> tuple[float, float]:
    from chimed_ray.config import SFTConfig, load_config
    from chimed_ray.trainers.launch import run_ray_train
    from chimed_ray.utils.tracking import read_metrics

    config = load_config(
        SFTConfig,
        CONFIG,
        ["model.path=", f"output_dir={output_dir}", f"optim.max_steps={steps}", f"scale.num_workers={workers}",
         "optim.micro_batch_size=8", "logging.log_every=1", "logging.save_every=0", "logging.progress_bar=false"],
    )
    start = time.perf_counter()
    run_ray_train("sft", config)
    wall = time.perf_counter() - start
    rates = [r["train/tokens_per_s"] for r in read_metrics(output_dir / "metrics.jsonl") if "train/tokens_per_s" in r]
    steady = rates[3:] or rates
    return sum(steady) / len(steady), wall


def plain_hf_trainer(steps: int, global_batch: int, output_dir: Path) -> tuple[float, float]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from chimed_ray.config import SFTConfig, load_config
    from chimed_ray.models import build_causal_lm, load_tokenizer
    from chimed_ray.trainers.sft import SFTTask

    config = load_config(SFTConfig, CONFIG, ["model.path="])
    tokenizer = load_tokenizer("")
    train, _ = SFTTask().build_examples(config, tokenizer)
    model = build_causal_lm("", config.model.tiny, tokenizer, seed=config.optim.seed)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.tokens, self.start, self.seen = 0, 0.0, 0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                self.start = time.perf_counter()

    timer = Timer()

    def collate(rows):
        batch = SFTTask().collate([(r["input_ids"], r["labels"]) for r in rows], tokenizer)
        if timer.start:
            timer.tokens += int(batch.attention_mask.sum())
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}

    dataset = [{"input_ids": ids, "labels": labels} for ids, labels in train]
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=global_batch,
        learning_rate=config.optim.lr, lr_scheduler_type="cosine", warmup_steps=int(config.optim.warmup_ratio * steps),
        logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    torch.manual_seed(0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    return timer.tokens / max(end - timer.start, 1e-9), end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ray_rate, ray_wall = ours(args.steps, args.workers, Path(tmp) / "ours")
        hf_rate, hf_wall = plain_hf_trainer(args.steps, 8 * args.workers, Path(tmp) / "hf")
    print("\nSFT throughput on CPU (tiny LLaMA, bundled dialogues, global batch %d)" % (8 * args.workers))
    print(f"{'engine':<44}{'tokens/s':>12}{'wall s':>10}")
    print(f"{'chimed-ray: Ray Train, %d workers, ZeRO-2' % args.workers:<44}{ray_rate:>12.0f}{ray_wall:>10.1f}")
    print(f"{'plain HF Trainer, 1 process':<44}{hf_rate:>12.0f}{hf_wall:>10.1f}")
    print(f"ratio (chimed-ray / HF Trainer): {ray_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()
