"""Eval items/s on CPU: our Ray Data actor pool (2 actors) vs a plain single-process loop, same model,
same requests (bundled MCQ/MedQA/CAMI/MICA option scoring plus QA/dialogue generation), side by side.

    python benchmarks/eval_throughput.py [--actors 2] [--items 32] [--batch-size 8] [--max-new-tokens 16]
                                         [--hidden-size 64] [--layers 2] [--checkpoint DIR]

Both timings are wall time from the request list to the last answer, model loading included (what a
user waits for); Ray's own start-up (`ray.init`) is excluded and printed apart. Without
`--checkpoint` a tiny LLaMA of the given shape is built on the bundled tokenizer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TASKS = ("mcq", "medqa", "cami", "mica", "qa", "dialogue")


def build_requests(items: int, max_new_tokens: int) -> list:
    from chimed_ray.evaluation.tasks import TaskOptions, load_task

    options = TaskOptions(max_items=items, max_new_tokens=max_new_tokens)
    return [request for name in TASKS for request in load_task(name, options).requests()]


def tiny_checkpoint(directory: Path, hidden_size: int, layers: int) -> Path:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    shape = TinyModelConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 11 // 4, num_hidden_layers=layers)
    return save_hf_checkpoint(build_causal_lm("", shape, tokenizer, seed=0), tokenizer, directory / "model")


def timed(run, requests: list) -> tuple[float, list]:
    start = time.perf_counter()
    responses = run(requests)
    return time.perf_counter() - start, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--items", type=int, default=32, help="items per task (6 tasks)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()

    import ray

    from chimed_ray.evaluation.distributed import run_local, run_on_ray
    from chimed_ray.evaluation.metrics import choose_option

    requests = build_requests(args.items, args.max_new_tokens)
    kinds = {kind: sum(r.kind == kind for r in requests) for kind in ("choice", "generate")}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(tiny_checkpoint(Path(tmp), args.hidden_size, args.layers))
        common = {"model_path": checkpoint, "precision": "fp32", "max_prompt_length": 1024,
                  "batch_size": args.batch_size, "progress_bar": False}
        local_seconds, local = timed(lambda reqs: run_local(reqs, **common), requests)
        start = time.perf_counter()
        ray.init(num_cpus=max(args.actors, 2), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        ray_seconds, remote = timed(lambda reqs: run_on_ray(reqs, num_actors=args.actors, **common), requests)
        ray.shutdown()
    local_by_uid = {r.uid: r for r in local}
    same_choice = sum(
        choose_option(r.option_logprobs) == choose_option(local_by_uid[r.uid].option_logprobs)
        for r in remote if r.option_logprobs
    )
    print(f"model: {checkpoint if args.checkpoint else f'tiny LLaMA h={args.hidden_size} L={args.layers}'}, "
          f"{len(requests)} requests ({kinds['choice']} option scoring, {kinds['generate']} generation of "
          f"<= {args.max_new_tokens} tokens), batch size {args.batch_size}")
    print(f"{'path':<34}{'seconds':>10}{'items/s':>10}")
    print(f"{'single-process loop':<34}{local_seconds:>10.2f}{len(requests) / local_seconds:>10.1f}")
    print(f"{f'Ray Data, {args.actors} actors':<34}{ray_seconds:>10.2f}{len(requests) / ray_seconds:>10.1f}")
    print(f"(ray.init took {ray_start:.1f} s, not counted; same option chosen on "
          f"{same_choice}/{kinds['choice']} option requests)")


if __name__ == "__main__":
    main()
