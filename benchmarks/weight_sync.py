"""Weight sync on CPU: Ray's object store (the fallback) vs the collective sync (a gloo group of its
own, bucketed broadcast), for LLaMA models of about 50M and 200M parameters, in one run, one table.

    python benchmarks/weight_sync.py [--sizes 50m,200m] [--bucket-mb 64] [--repeats 3]

One policy rank (DeepSpeed ZeRO-2, fp32) and one HF rollout engine, each its own Ray actor. A
figure is the median over `--repeats` syncs after a first warm-up sync (which also pays for the
engine's first write into weights it loaded from safetensors). Seconds are the driver's wall
time of one sync. Peak extra memory is measured inside each actor around its whole share of the
work: the resident set size, sampled every millisecond, above its level before the sync. For the
object store that is the gather plus `ray.put` on the policy and `ray.get` plus the load on the
engine; for the collective sync the bucket loop on each side. The object-store bytes column is
what Ray's plasma store created during the sync (GCS store stats).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from chimed_ray.distributed.policy import PolicyWorker
from chimed_ray.distributed.rollout import RolloutWorker
from chimed_ray.distributed.weight_sync import PeakMemory

SHAPES = {  # hidden, intermediate, layers, heads: ~51M and ~192M parameters with the 6,000-token vocabulary
    "50m": (512, 1408, 14, 8),
    "200m": (1024, 2816, 14, 16),
}


class MeasuredPolicy(PolicyWorker):
    def state_to_store(self) -> tuple[list, int]:
        """The object-store path's policy side, measured: gather the state dict and put it."""
        import ray

        with PeakMemory(self.device) as memory:
            state = self.full_state_dict()
            ref = ray.put(state) if state is not None else None
            del state
        return [ref], memory.extra


class MeasuredRollout(RolloutWorker):
    def load_from_store(self, refs: list) -> int:
        """The object-store path's engine side, measured: fetch the state dict and load it."""
        import ray

        with PeakMemory(self.device) as memory:
            state = ray.get(refs[0])
            self.engine.load_weights(state)
            del state
        return memory.extra


def store_created_bytes() -> int:
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.cumulative_created_bytes)


def checkpoint(directory: Path, size: str) -> tuple[Path, int]:
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm, load_tokenizer, save_hf_checkpoint

    hidden, intermediate, layers, heads = SHAPES[size]
    tokenizer = load_tokenizer("")
    shape = TinyModelConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=heads, num_key_value_heads=heads)
    model = build_causal_lm("", shape, tokenizer, seed=0)
    count = sum(p.numel() for p in model.parameters())
    return save_hf_checkpoint(model, tokenizer, directory / size), count


def measure(size: str, directory: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import ray

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.distributed.group import ActorGroup
    from chimed_ray.distributed.placement import RoleResources, plan_slots, release
    from chimed_ray.distributed.weight_sync import WeightSync
    from chimed_ray.distributed.worker import ModelSpec

    path, count = checkpoint(directory, size)
    slots = plan_slots({"policy": RoleResources(1, 1, 0), "rollout": RoleResources(1, 1, 0)}, "split", f"bench-{size}")
    policy = ActorGroup("policy", MeasuredPolicy, slots["policy"], "gloo")
    engine = ActorGroup("rollout", MeasuredRollout, slots["rollout"], "gloo")
    spec = ModelSpec(path=str(path))
    results = {}
    try:
        ray.get(policy.async_run("setup", spec, OptimConfig(lr=1e-5, micro_batch_size=1), ScaleConfig(num_workers=1), 10)
                + engine.async_run("setup", "hf", spec))
        collective = WeightSync(policy, engine, "collective", bucket_mb=args.bucket_mb, backend="gloo")
        rows = []
        for _ in range(args.repeats + 1):
            stored, started = store_created_bytes(), time.perf_counter()
            report = collective()
            rows.append((time.perf_counter() - started, report.policy_peak_extra_bytes,
                         report.engine_peak_extra_bytes, store_created_bytes() - stored))
        results[f"collective ({args.bucket_mb} MB buckets)"] = summarize(rows[1:])
        rows = []
        for _ in range(args.repeats + 1):
            stored, started = store_created_bytes(), time.perf_counter()
            refs, policy_peak = policy.actors[0].state_to_store.remote(), None
            engine_peak = ray.get(engine.actors[0].load_from_store.remote(ray.get(refs)[0]))
            policy_peak = ray.get(refs)[1]
            rows.append((time.perf_counter() - started, policy_peak, engine_peak, store_created_bytes() - stored))
        results["object store"] = summarize(rows[1:])
    finally:
        policy.shutdown()
        engine.shutdown()
        release(slots)
    print(f"{size}: {count / 1e6:.0f}M parameters, {count * 4 / 2**20:.0f} MB in fp32", flush=True)
    return {"params": count, **results}


def summarize(rows: list[tuple[float, int, int, int]]) -> dict[str, float]:
    seconds, policy_peak, engine_peak, stored = zip(*rows)
    mb = 2**20
    return {"seconds": statistics.median(seconds), "policy_mb": statistics.median(policy_peak) / mb,
            "engine_mb": statistics.median(engine_peak) / mb, "store_mb": statistics.median(stored) / mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50m,200m")
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        results = {size: measure(size, Path(tmp), args) for size in args.sizes.split(",")}
    ray.shutdown()
    print(f"\n{'model':<8}{'path':<30}{'seconds':>9}{'policy peak MB':>16}{'engine peak MB':>16}{'object store MB':>17}")
    for size, result in results.items():
        for path, row in result.items():
            if path != "params":
                print(f"{size:<8}{path:<30}{row['seconds']:>9.2f}{row['policy_mb']:>16.0f}{row['engine_mb']:>16.0f}"
                      f"{row['store_mb']:>17.0f}")


if __name__ == "__main__":
    main()
