"""Serving load: continuous batching vs one request at a time, a soak run, and hostile traffic.

    python benchmarks/serve_load.py [--checkpoint DIR | --model tiny|small] [--requests 256]
                                    [--concurrency 32] [--max-tokens 32]
                                    [--soak 1000 --soak-concurrency 64] [--hostile 256]

Starts the app from configs/serve/tiny.yaml on a local Ray cluster (a freshly initialised `--model`
when no checkpoint is given) and sends the same chat requests (temperature 0.7, own seed, EOS
ignored, so every run generates exactly requests x max_tokens tokens) over loopback HTTP:
1. once with continuous batching and once with batching off, printing requests/s, tokens/s, p50 and
   p99 latency side by side (targets: >= 4x requests/s, p99 <= 2x p50 when batched);
2. `--soak N`: N requests at `--soak-concurrency` on the batched app, counting failures (target 0);
3. `--hostile N`: N requests of which every fourth is malformed (NaN-prone temperature, seed out of
   range, 2,000 stops, penalties out of range, oversized body); every good one must succeed, every
   bad one must get a 4xx.
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
HOSTILE = [
    {"temperature": 1e-40},
    {"seed": 2**64},
    {"stop": ["。"] * 2000},
    {"frequency_penalty": 1e9},
    {"messages": [{"role": "user", "content": "病" * (3 * 1024 * 1024)}]},
]


def fresh_checkpoint(directory: Path, shape: str) -> Path:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    tokenizer = load_tokenizer("")
    model = build_causal_lm("", TinyModelConfig(**SHAPES[shape]), tokenizer, seed=0)
    return save_hf_checkpoint(model, tokenizer, directory / shape)


def chat_body(index: int, max_tokens: int) -> dict:
    return {"model": "bench", "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": index, "ignore_eos": True}


async def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send `bodies` with at most `concurrency` in flight; latency and status of each."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    results: list[tuple[int, float, int]] = []  # (status, latency, completion tokens)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(body: dict) -> None:
            async with gate:
                start = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                    status = response.status_code
                    tokens = response.json()["usage"]["completion_tokens"] if status == 200 else 0
                except (httpx.HTTPError, ValueError, KeyError):
                    status, tokens = -1, 0
                results.append((status, time.perf_counter() - start, tokens))

        # Warm-up, not timed: one full wave at the run's own concurrency and length, so the first
        # allocations of every batch size and the routers' first connections are paid outside the clock.
        warm = bodies[:concurrency]
        await asyncio.gather(*(one({**body, "seed": index + 10**6}) for index, body in enumerate(warm)))
        results.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        wall = time.perf_counter() - start
    return {"results": results, "wall_s": wall}


def summarize(run: dict) -> dict[str, float]:
    ok = sorted(latency for status, latency, _ in run["results"] if status == 200)
    tokens = sum(tokens for *_, tokens in run["results"])
    return {
        "requests_per_s": len(ok) / run["wall_s"],
        "tokens_per_s": tokens / run["wall_s"],
        "p50_s": statistics.median(ok) if ok else float("nan"),
        "p99_s": ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))] if ok else float("nan"),
        "wall_s": run["wall_s"],
        "failures": sum(1 for status, *_ in run["results"] if status != 200),
    }


def start_app(checkpoint: Path, batching: bool, concurrency: int, port: int) -> tuple[str, str]:
    from chimed_ray.config.loader import load_config
    from chimed_ray.config.serve import ServeConfig
    from chimed_ray.serving import start_server

    overrides = [
        f"models={json.dumps([{'name': 'bench', 'path': str(checkpoint)}])}",
        f"batching.enabled={str(batching).lower()}",
        f"batching.max_batch_size={concurrency}",
        f"deployment.max_ongoing_requests={concurrency * 2}",
        f"http.port={port}",
        "http.app_name=serve-load",
        "log_requests=false",
    ]
    config = load_config(ServeConfig, CONFIG, overrides)
    return start_server(config), config.http.app_name


def replica_info(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=60) as response:
        return json.loads(response.read())["models"]["bench"]


def compare(checkpoint: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Continuous batching vs batching off on the same requests."""
    from chimed_ray.serving import shutdown_server

    bodies = [chat_body(i, args.max_tokens) for i in range(args.requests)]
    results = {}
    for name in ("batched", "unbatched"):
        url, app = start_app(checkpoint, name == "batched", args.concurrency, args.port)
        try:
            results[name] = summarize(asyncio.run(load(url, bodies, args.concurrency)))
            info = replica_info(url)
            results[name]["largest_batch"] = info.get("largest_batch", 0)
        finally:
            shutdown_server(app)
    return results


def soak_and_hostile(checkpoint: Path, args: argparse.Namespace) -> None:
    from chimed_ray.serving import shutdown_server

    concurrency = max(args.soak_concurrency, args.concurrency)
    url, app = start_app(checkpoint, True, concurrency, args.port)
    try:
        if args.soak:
            bodies = [chat_body(i, args.max_tokens) for i in range(args.soak)]
            soak = summarize(asyncio.run(load(url, bodies, args.soak_concurrency)))
            print(f"\nsoak: {args.soak} requests at {args.soak_concurrency} concurrent: {soak['failures']} failures, "
                  f"{soak['requests_per_s']:.2f} req/s, p50 {soak['p50_s']:.3f} s, p99 {soak['p99_s']:.3f} s")
        if args.hostile:
            bodies = [chat_body(i, args.max_tokens) for i in range(args.hostile)]
            bad = set()
            for index in range(3, args.hostile, 4):
                bodies[index] = {**bodies[index], **HOSTILE[(index // 4) % len(HOSTILE)]}
                bad.add(index)
            run = asyncio.run(load(url, bodies, args.concurrency))
            statuses = [status for status, *_ in run["results"]]
            good_ok = sum(1 for status in statuses if status == 200)
            refused = sum(1 for status in statuses if 400 <= status < 500)
            print(f"hostile: {args.hostile} requests, {len(bad)} malformed: {good_ok}/{args.hostile - len(bad)} good "
                  f"answered 200, {refused}/{len(bad)} bad refused with 4xx, "
                  f"other statuses {sorted(s for s in statuses if s != 200 and not 400 <= s < 500)}")
            status, seconds = huge_body_refusal(url)
            print(f"a 20 MB body: status {status} in {seconds:.3f} s")
    finally:
        shutdown_server(app)


def huge_body_refusal(url: str) -> tuple[int, float]:
    """Status and seconds of a 20 MB chat request on the idle app."""
    import httpx

    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "病" * (20 * 1024 * 1024 // 6)}]})
    start = time.perf_counter()
    response = httpx.post(f"{url}/chat/completions", content=body.encode(), timeout=600,
                          headers={"Content-Type": "application/json"})
    return response.status_code, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="HF checkpoint dir (default: a fresh --model)")
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny", help="shape of the fresh model")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--soak", type=int, default=0, help="requests in the soak run (0: skip)")
    parser.add_argument("--soak-concurrency", type=int, default=64)
    parser.add_argument("--hostile", type=int, default=0, help="requests in the hostile mix (0: skip)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else fresh_checkpoint(Path(tmp), args.model)
        results = compare(checkpoint, args) if args.requests else {}
        if args.soak or args.hostile:
            soak_and_hostile(checkpoint, args)
    ray.shutdown()
    if not results:
        return
    print(f"\n{args.requests} chat requests, {args.concurrency} concurrent, {args.max_tokens} tokens each, "
          f"checkpoint {args.checkpoint or args.model + ' (fresh)'}")
    print(f"{'':<12}{'req/s':>9}{'tokens/s':>11}{'p50 s':>9}{'p99 s':>9}{'p99/p50':>9}{'wall s':>9}"
          f"{'failed':>8}{'max batch':>11}")
    for name, r in results.items():
        print(f"{name:<12}{r['requests_per_s']:>9.2f}{r['tokens_per_s']:>11.1f}{r['p50_s']:>9.3f}{r['p99_s']:>9.3f}"
              f"{r['p99_s'] / r['p50_s']:>9.2f}{r['wall_s']:>9.2f}{r['failures']:>8d}{r['largest_batch']:>11d}")
    ratio = results["batched"]["requests_per_s"] / results["unbatched"]["requests_per_s"]
    print(f"continuous batching on / off: {ratio:.2f}x requests/s")


if __name__ == "__main__":
    main()
