"""Serving throughput with dynamic batching on vs off: N concurrent chat requests over loopback.

    python benchmarks/serve_load.py [--checkpoint DIR | --model tiny|small] [--requests 64] [--concurrency 16]
                                    [--max-tokens 32]

Starts the app from configs/serve/tiny.yaml on a local Ray cluster (a freshly initialised `--model`
when no checkpoint is given), sends the same request mix twice, once per batching setting, with
the official `openai` AsyncClient, and prints requests/s, tokens/s and p50/p99 latency side by side.
Every request samples (temperature 0.7, its own seed) and ignores EOS, so both runs generate
exactly requests x max_tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve" / "tiny.yaml"
QUESTIONS = [
    "患者发热咳嗽三天，应该怎么办？",
    "高血压患者饮食上要注意什么？",
    "糖尿病的典型症状有哪些？",
    "胸闷心悸需要做哪些检查？",
]


# "small" has enough compute per token for batching to matter the way it does on real models.
SHAPES = {
    "tiny": {},
    "small": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4},
}


def fresh_checkpoint(directory: Path, shape: str) -> Path:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    model = build_causal_lm("", TinyModelConfig(**SHAPES[shape]), tokenizer, seed=0)
    return save_hf_checkpoint(model, tokenizer, directory / shape)


async def load(url: str, requests: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    import openai

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600) as client:

        async def one(index: int) -> int:
            async with gate:
                start = time.perf_counter()
                response = await client.chat.completions.create(
                    model="bench", messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                    max_tokens=max_tokens, temperature=0.7, seed=index, extra_body={"ignore_eos": True},
                )
                latencies.append(time.perf_counter() - start)
                return response.usage.completion_tokens

        await asyncio.gather(*(one(i) for i in range(min(concurrency, 4))))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": tokens / wall,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "wall_s": wall,
    }


def run_mode(checkpoint: Path, batching: bool, args: argparse.Namespace) -> dict[str, float]:
    from chimed_ray.config.loader import load_config
    from chimed_ray.config.serve import ServeConfig
    from chimed_ray.serving import shutdown_server, start_server

    overrides = [
        f"models={json.dumps([{'name': 'bench', 'path': str(checkpoint)}])}",
        f"batching.enabled={str(batching).lower()}",
        f"batching.max_batch_size={args.concurrency}",
        f"batching.batch_wait_timeout_s={args.batch_wait}",
        f"deployment.max_ongoing_requests={args.concurrency * 2}",
        f"http.port={args.port}",
        "http.app_name=serve-load",
        "log_requests=false",
    ]
    config = load_config(ServeConfig, CONFIG, overrides)
    url = start_server(config)
    try:
        result = asyncio.run(load(url, args.requests, args.concurrency, args.max_tokens))
        sent = args.requests + min(args.concurrency, 4)  # warm-up requests count too
        result["mean_batch"] = sent / max(replica_info(url)["batches_run"], 1)
        return result
    finally:
        shutdown_server(config.http.app_name)


def replica_info(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=60) as response:
        return json.loads(response.read())["models"]["bench"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="HF checkpoint dir (default: a fresh --model)")
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny", help="shape of the fresh model")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--batch-wait", type=float, default=0.01, help="batching.batch_wait_timeout_s")
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else fresh_checkpoint(Path(tmp), args.model)
        results = {name: run_mode(checkpoint, name == "batched", args) for name in ("batched", "unbatched")}
    ray.shutdown()

    print(f"\n{args.requests} chat requests, {args.concurrency} concurrent, {args.max_tokens} tokens each, "
          f"checkpoint {args.checkpoint or args.model + ' (fresh)'}")
    print(f"{'':<12}{'req/s':>9}{'tokens/s':>11}{'p50 s':>9}{'p99 s':>9}{'wall s':>9}{'mean batch':>12}")
    for name, r in results.items():
        print(f"{name:<12}{r['requests_per_s']:>9.2f}{r['tokens_per_s']:>11.1f}{r['p50_s']:>9.3f}"
              f"{r['p99_s']:>9.3f}{r['wall_s']:>9.2f}{r['mean_batch']:>12.1f}")
    ratio = results["batched"]["requests_per_s"] / results["unbatched"]["requests_per_s"]
    p50_ratio = results["unbatched"]["p50_s"] / results["batched"]["p50_s"]
    print(f"batching on / off: {ratio:.2f}x requests/s, {p50_ratio:.2f}x lower p50 latency")


if __name__ == "__main__":
    main()
