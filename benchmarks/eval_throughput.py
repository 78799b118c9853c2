"""Eval items/s on CPU, three paths side by side on the same model and requests: the single-process
loop (`scale.num_actors=0`), the path `scale.num_actors=auto` picks, and a forced Ray Data actor pool
(`scale.num_actors=N`). Requests are the bundled MCQ/MedQA/CAMI/MICA option scoring plus QA/dialogue
generation, repeated up to `--requests`.

    python benchmarks/eval_throughput.py [--requests 2000] [--rounds 2] [--actors 2] [--batch-size 8]
        [--max-new-tokens 16] [--hidden-size 512] [--layers 8] [--checkpoint DIR] [--paths loop,auto,pool]

Each timing is wall time from the request list to the last answer, model loading and actor start-up
included (what a user waits for); Ray's own start-up (`ray.init`, once, before any timing) is
printed apart. The paths run in turns, `--rounds` times, in an order that alternates per round, so
load from other processes on a shared machine hits all of them alike; the ratios to the loop are
printed per round, and their spread across rounds is the noise. The Ray cluster is this machine, so
`auto` sees one node without GPUs and must pick the loop. Without `--checkpoint` a LLaMA of the given
shape is built on the bundled tokenizer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

TASKS = ("mcq", "medqa", "cami", "mica", "qa", "dialogue")
PATHS = ("loop", "auto", "pool")


def build_requests(count: int, max_new_tokens: int) -> list:
    """`count` requests in the bundled tasks' mix: an even sample of them, or all of them repeated
    (uids made unique) until there are enough."""
    from chimed_ray.evaluation.tasks import TaskOptions, load_task

    options = TaskOptions(max_new_tokens=max_new_tokens)
    base = [request for name in TASKS for request in load_task(name, options).requests()]
    if count <= len(base):
        return [base[i * len(base) // count] for i in range(count)]
    return [replace(base[i % len(base)], uid=f"{base[i % len(base)].uid}#{i // len(base)}") for i in range(count)]


def tiny_checkpoint(directory: Path, hidden_size: int, layers: int) -> Path:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    shape = TinyModelConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 11 // 4, num_hidden_layers=layers)
    return save_hf_checkpoint(build_causal_lm("", shape, tokenizer, seed=0), tokenizer, directory / "model")


def answerers(checkpoint: str, args: argparse.Namespace) -> dict:
    """Path name -> (function answering a request list, description of the path it took)."""
    from chimed_ray.config.eval import EvalConfig, EvalScaleConfig
    from chimed_ray.evaluation.run import checkpoint_answerer, choose_plan

    def answerer(num_actors):
        def run(requests):
            scale = EvalScaleConfig(num_actors=num_actors, batch_size=args.batch_size, progress_bar=False)
            config = EvalConfig(scale=scale)
            config.generation.max_prompt_length = 1024
            started = time.perf_counter()
            plan = choose_plan(scale)  # timed: auto's decision is part of what it costs
            run.decision_s, run.described = time.perf_counter() - started, plan.describe()
            return checkpoint_answerer(config, plan, Path(checkpoint), "bench")(requests)
        run.described, run.decision_s = "", 0.0
        return run

    return {"loop": answerer(0), "auto": answerer("auto"), "pool": answerer(args.actors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2, help="size of the forced pool")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--paths", default=",".join(PATHS), help="which of loop,auto,pool to run")
    args = parser.parse_args()
    paths = tuple(path for path in PATHS if path in args.paths.split(","))
    if "loop" not in paths:
        parser.error("--paths must include loop: every ratio is to it")

    import ray

    from chimed_ray.evaluation.metrics import choose_option

    requests = build_requests(args.requests, args.max_new_tokens)
    kinds = {kind: sum(r.kind == kind for r in requests) for kind in ("choice", "generate")}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(tiny_checkpoint(Path(tmp), args.hidden_size, args.layers))
        start = time.perf_counter()
        ray.init(num_cpus=max(args.actors, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        print(f"model: {checkpoint if args.checkpoint else f'LLaMA h={args.hidden_size} L={args.layers}'}, "
              f"{len(requests)} requests ({kinds['choice']} option scoring, {kinds['generate']} generation of "
              f"<= {args.max_new_tokens} tokens), batch size {args.batch_size}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
        runs = answerers(checkpoint, args)
        seconds: dict[str, list[float]] = {path: [] for path in paths}
        answers: dict[str, list] = {}
        for round_index in range(args.rounds):
            order = paths if round_index % 2 == 0 else paths[::-1]
            for path in order:
                started = time.perf_counter()
                answers[path] = runs[path](requests)
                seconds[path].append(time.perf_counter() - started)
                print(f"round {round_index + 1} {path:<5} {seconds[path][-1]:8.1f} s  "
                      f"{len(requests) / seconds[path][-1]:7.2f} items/s  ({runs[path].described}; "
                      f"load average {os.getloadavg()[0]:.1f})", flush=True)
        ray.shutdown()
    _print_summary(seconds, len(requests), args.actors)
    if "auto" in seconds:
        print(f"auto chose the {runs['auto'].described}, deciding in {runs['auto'].decision_s * 1000:.1f} ms: on one "
              "machine without GPUs auto is the loop itself, so it is never slower than the loop beyond that decision "
              "(the auto/loop ratios above measure it; their spread is the noise)")
    print(f"(ray.init took {ray_start:.1f} s, not counted)")
    if not {"loop", "pool"} <= set(answers):
        return
    loop_by_uid = {r.uid: r for r in answers["loop"]}
    same = sum(choose_option(r.option_logprobs) == choose_option(loop_by_uid[r.uid].option_logprobs)
               for r in answers["pool"] if r.option_logprobs)
    same_text = sum(r.text == loop_by_uid[r.uid].text for r in answers["pool"] if not r.option_logprobs)
    print(f"the pool chose the loop's option on {same}/{kinds['choice']} option requests and generated the "
          f"loop's text on {same_text}/{kinds['generate']}")


def _print_summary(seconds: dict[str, list[float]], count: int, actors: int) -> None:
    print(f"\n{'path':<28}{'items/s (median)':>18}{'x loop per round':>26}")
    labels = {"loop": "single-process loop", "auto": "num_actors=auto", "pool": f"Ray Data pool, {actors} actors"}
    for path, label in ((path, labels[path]) for path in seconds):
        ratios = [loop / mine for loop, mine in zip(seconds["loop"], seconds[path])]
        shown = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"{label:<28}{count / statistics.median(seconds[path]):>18.2f}{shown:>26}")
    loop = seconds["loop"]
    if len(loop) > 1:
        print(f"noise: the loop's own time varied {min(loop):.1f}-{max(loop):.1f} s across rounds "
              f"({(max(loop) - min(loop)) / statistics.median(loop):.0%} of its median)")


if __name__ == "__main__":
    main()
