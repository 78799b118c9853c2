"""Weight sync: after a policy update, a separate rollout engine holds exactly the policy's weights,
through a process group of its own in buckets (ZeRO-2 and ZeRO-3), with about two buckets of
extra memory and nothing the size of the model in Ray's object store; and samples differ."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["[human]:头痛怎么办\n[bot]:", "[human]:发烧了\n[bot]:"]


def start(slots_name: str, policy_workers: int, engines: int, zero_stage: int, checkpoint, lr: float = 0.05):
    import ray

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.distributed.group import ActorGroup
    from chimed_ray.distributed.placement import RoleResources, plan_slots
    from chimed_ray.distributed.policy import PolicyWorker
    from chimed_ray.distributed.rollout import RolloutWorker
    from chimed_ray.distributed.worker import ModelSpec

    slots = plan_slots({"policy": RoleResources(policy_workers, 0.5, 0), "rollout": RoleResources(engines, 0.5, 0)},
                       "split", slots_name)
    policy = ActorGroup("policy", PolicyWorker, slots["policy"], "gloo")
    engine = ActorGroup("rollout", RolloutWorker, slots["rollout"], "gloo")
    spec = ModelSpec(path=str(checkpoint))
    ray.get(policy.async_run("setup", spec, OptimConfig(lr=lr, warmup_ratio=0.0, micro_batch_size=2),
                             ScaleConfig(num_workers=policy_workers, zero_stage=zero_stage), 10)
            + engine.async_run("setup", "hf", spec))
    return slots, policy, engine


def train_once(policy, tokenizer) -> None:
    """One PPO update on the policy's own samples (advantage 1 everywhere: a large, sure change)."""
    import ray

    from chimed_ray.distributed.batch import Experience, build_rollout_batch, concat_rows
    from chimed_ray.distributed.policy import PolicyLossSpec, eos_token_ids
    from chimed_ray.rollout.base import SamplingParams

    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS] * 2
    sampled = [a for part in ray.get(policy.async_run_sharded("generate", prompts, SamplingParams(12, seed=0))) for a in part]
    batch = build_rollout_batch(prompts, sampled, [0, 1, 0, 1], tokenizer.pad_token_id, eos_token_ids(tokenizer))
    old_logprobs = concat_rows(ray.get(policy.async_run_sharded("logprobs", batch)))
    experience = Experience(batch.sequences, batch.attention_mask, batch.response_mask, batch.group_ids,
                            old_logprobs=old_logprobs, advantages=batch.response_mask.float())
    ray.get(policy.async_run_sharded("train_step", experience, PolicyLossSpec(mini_batch_size=2, micro_batch_size=2)))


@pytest.mark.parametrize("zero_stage,engines", [(2, 2), (3, 1)])
def test_collective_sync_gives_the_engines_the_policy_weights(ray_cluster, tiny_checkpoint, tokenizer, zero_stage, engines):
    import ray

    from chimed_ray.distributed.placement import release
    from chimed_ray.distributed.rollout import state_digest
    from chimed_ray.distributed.weight_sync import WeightSync
    from chimed_ray.rollout.base import SamplingParams

    slots, policy, engine = start(f"sync-z{zero_stage}", 2, engines, zero_stage, tiny_checkpoint)
    try:
        sync = WeightSync(policy, engine, "collective", bucket_mb=1, backend="gloo")
        assert len(ray.get(sync.buckets)) > 1  # the tiny model (~2.6 MB) really goes in several buckets
        train_once(policy, tokenizer)
        policy_digest = state_digest(ray.get(policy.async_run("full_state_dict"))[0])
        assert set(ray.get(engine.async_run("weights_digest"))) != {policy_digest}  # not synced yet

        report = sync()
        assert report.nbytes > 2**20
        assert ray.get(engine.async_run("weights_digest")) == [policy_digest] * engines
        greedy = SamplingParams(max_new_tokens=12, greedy=True)
        prompts = [tokenizer(text)["input_ids"] for text in PROMPTS] * 2
        assert ray.get(engine.async_run("generate", prompts, greedy))[0] == \
            [a for part in ray.get(policy.async_run_sharded("generate", prompts, greedy)) for a in part]
    finally:
        policy.shutdown()
        engine.shutdown()
        release(slots)


def test_sync_memory_stays_near_two_buckets_and_off_the_object_store(ray_cluster, tmp_path, tokenizer):
    """A ~36 MB model in 4 MB buckets: the collective sync holds about two buckets extra on either
    side and puts nothing in the object store; the object-store fallback (same run) stores the
    whole model."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    from chimed_ray.config import TinyModelConfig
    from chimed_ray.distributed.placement import release
    from chimed_ray.distributed.weight_sync import WeightSync
    from chimed_ray.models import build_causal_lm, save_hf_checkpoint

    shape = TinyModelConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=8)
    checkpoint = save_hf_checkpoint(build_causal_lm("", shape, tokenizer, seed=0), tokenizer, tmp_path / "model")

    def store_created_bytes() -> int:
        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        return int(reply.store_stats.cumulative_created_bytes)

    slots, policy, engine = start("sync-memory", 1, 1, 2, checkpoint)
    try:
        bucket = 4 * 2**20
        collective = WeightSync(policy, engine, "collective", bucket_mb=4, backend="gloo")
        before = store_created_bytes()
        reports = [collective() for _ in range(2)]
        stored_by_collective = store_created_bytes() - before
        model_bytes = reports[0].nbytes
        assert model_bytes > 25 * 2**20

        before = store_created_bytes()
        fallback = WeightSync(policy, engine, "object_store")()
        stored_by_fallback = store_created_bytes() - before
    finally:
        policy.shutdown()
        engine.shutdown()
        release(slots)
    assert stored_by_fallback >= model_bytes  # the measure sees a model-sized object when there is one
    assert stored_by_collective < model_bytes / 100, stored_by_collective
    # The first sync also writes the engine's weights for the first time: loaded from safetensors
    # they are file-backed pages until then, so its RSS grows by the model once. Every later sync
    # holds two buckets (the flat buffer, plus the gathered or loaded tensors) and a few MB of
    # allocator and thread slack.
    report = reports[1]
    assert report.engine_peak_extra_bytes <= min(2 * bucket + 8 * 2**20, model_bytes / 2), reports
    assert report.policy_peak_extra_bytes <= min(2 * bucket + 8 * 2**20, model_bytes / 2), reports
    assert fallback.engine_peak_extra_bytes >= 0
    assert fallback.nbytes == model_bytes


def test_repeated_prompts_get_different_samples(tiny_checkpoint, tokenizer):
    """GRPO/RLOO need several different answers per prompt: one seed per call, not per prompt."""
    from chimed_ray.distributed.policy import eos_token_ids
    from chimed_ray.rollout.base import SamplingParams, derive_seed
    from chimed_ray.rollout.hf_engine import HFEngine

    engine = HFEngine.from_path(str(tiny_checkpoint), eos_token_ids(tokenizer), tokenizer.pad_token_id, batch_size=3)
    prompt = tokenizer(PROMPTS[0])["input_ids"]
    answers = engine.generate([prompt] * 6, SamplingParams(max_new_tokens=8, seed=7))
    assert len({tuple(a) for a in answers}) >= 5, answers
    assert engine.generate([prompt] * 6, SamplingParams(max_new_tokens=8, seed=7)) == answers  # seeded: reproducible
    # Streams of neighbouring seeds and ranks never coincide (seed + rank would: 1 + 0 == 0 + 1).
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert len({derive_seed(100, rank, index) for rank in range(4) for index in range(64)}) == 256
