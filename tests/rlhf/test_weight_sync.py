"""Weight sync: after a policy update, a separate rollout engine generates with the new weights."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_engine_generates_with_the_new_policy_weights(ray_cluster, tiny_checkpoint, tokenizer):
    import ray

    from chimed_ray.config import OptimConfig, ScaleConfig
    from chimed_ray.distributed.batch import Experience, build_rollout_batch, concat_rows
    from chimed_ray.distributed.group import ActorGroup
    from chimed_ray.distributed.placement import RoleResources, plan_slots, release
    from chimed_ray.distributed.policy import PolicyLossSpec, PolicyWorker, eos_token_ids
    from chimed_ray.distributed.rollout import RolloutWorker, state_digest, sync_weights
    from chimed_ray.distributed.worker import ModelSpec
    from chimed_ray.rollout.base import SamplingParams

    slots = plan_slots({"policy": RoleResources(1, 1, 0), "rollout": RoleResources(1, 1, 0)}, "split", "sync-test")
    policy = ActorGroup("policy", PolicyWorker, slots["policy"], "gloo")
    engine = ActorGroup("rollout", RolloutWorker, slots["rollout"], "gloo")
    try:
        spec = ModelSpec(path=str(tiny_checkpoint))
        ray.get(policy.async_run("setup", spec, OptimConfig(lr=0.05, warmup_ratio=0.0, micro_batch_size=4),
                                 ScaleConfig(num_workers=1, zero_stage=2), 10)
                + engine.async_run("setup", "hf", spec))
        prompts = [tokenizer("[human]:头痛怎么办\n[bot]:")["input_ids"], tokenizer("[human]:发烧了\n[bot]:")["input_ids"]] * 2
        greedy = SamplingParams(max_new_tokens=12, greedy=True)

        def engine_answers():
            return ray.get(engine.async_run("generate", prompts, greedy))[0]

        def policy_answers():
            return ray.get(policy.async_run("generate", prompts, greedy))[0]

        before = engine_answers()
        assert before == policy_answers()  # both start from the same checkpoint

        # One PPO update with a large learning rate on the policy's own samples.
        sampled = ray.get(policy.async_run("generate", prompts, SamplingParams(max_new_tokens=12, seed=0)))[0]
        batch = build_rollout_batch(prompts, sampled, [0, 1, 0, 1], tokenizer.pad_token_id, eos_token_ids(tokenizer))
        old_logprobs = concat_rows(ray.get(policy.async_run("logprobs", batch)))
        experience = Experience(batch.sequences, batch.attention_mask, batch.response_mask, batch.group_ids,
                                old_logprobs=old_logprobs, advantages=batch.response_mask.float())
        ray.get(policy.async_run("train_step", experience, PolicyLossSpec(mini_batch_size=4, micro_batch_size=4)))

        updated = policy_answers()
        assert updated != before, "the update did not change the policy's greedy answers; raise the lr"
        assert engine_answers() == before  # no sync yet: the engine still has the old weights

        megabytes = sync_weights(policy, engine) / 2**20
        assert megabytes > 0.5
        assert engine_answers() == updated
        policy_state = ray.get(policy.async_run("full_state_dict"))[0]
        assert ray.get(engine.async_run("weights_digest"))[0] == state_digest(policy_state)
    finally:
        policy.shutdown()
        engine.shutdown()
        release(slots)
