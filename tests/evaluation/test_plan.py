"""The eval path choice (`scale.num_actors`), worked out by hand on cluster shapes, and the actor
pool's promise: one model load per actor per checkpoint, however many tasks it answers."""

from __future__ import annotations

import re

import pytest

from chimed_ray.config.eval import EvalScaleConfig
from chimed_ray.config.loader import ConfigError
from chimed_ray.evaluation.distributed import ClusterShape, plan_for, rows_per_task, run_local, run_on_ray


@pytest.mark.parametrize(
    ("scale", "shape", "actors", "gpus_each", "precision"),
    [
        (EvalScaleConfig(), ClusterShape(1, 2, 0), 0, 0.0, "fp32"),  # the laptop / one CPU node: loop
        (EvalScaleConfig(), ClusterShape(1, 64, 0), 0, 0.0, "fp32"),
        (EvalScaleConfig(), ClusterShape(3, 12, 0), 12, 0.0, "fp32"),  # CPU cluster: one actor per CPU
        (EvalScaleConfig(cpus_per_actor=4), ClusterShape(3, 12, 0), 3, 0.0, "fp32"),
        (EvalScaleConfig(), ClusterShape(1, 32, 8), 8, 1.0, "bf16"),  # one 8-GPU node: one actor per GPU
        (EvalScaleConfig(gpus_per_actor=2, precision="fp16"), ClusterShape(2, 64, 16), 8, 2.0, "fp16"),
        (EvalScaleConfig(num_actors=0), None, 0, 0.0, "fp32"),  # forced loop, cluster not looked at
        (EvalScaleConfig(num_actors=3), None, 3, 0.0, "fp32"),  # forced pool
        (EvalScaleConfig(num_actors=2, gpus_per_actor=1), None, 2, 1.0, "bf16"),
    ],
)
def test_plan_for_cluster_shapes(scale, shape, actors, gpus_each, precision):
    plan = plan_for(scale, shape)
    assert (plan.num_actors, plan.gpus_per_actor, plan.precision) == (actors, gpus_each, precision)
    assert ("loop" in plan.describe()) == (actors == 0)


@pytest.mark.parametrize(
    ("scale", "shape", "message"),
    [
        (EvalScaleConfig(precision="bf16"), ClusterShape(1, 8, 0), "scale.precision: bf16 needs GPU actors"),
        (EvalScaleConfig(gpus_per_actor=2), ClusterShape(1, 8, 1), "scale.num_actors: auto found no room"),
        (EvalScaleConfig(cpus_per_actor=16), ClusterShape(2, 8, 0), "scale.num_actors: auto found no room"),
    ],
)
def test_impossible_plans_name_the_key(scale, shape, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_for(scale, shape)


def test_task_size_keeps_every_actor_busy():
    assert rows_per_task(2000, 8, 2) == 16  # a few model batches per Ray Data task
    assert rows_per_task(10, 8, 4) == 3  # but never so many that an actor gets nothing
    assert rows_per_task(1, 8, 2) == 1


def test_auto_on_a_one_node_cpu_cluster_is_the_loop(ray_cluster):
    from chimed_ray.evaluation.run import choose_plan

    plan = choose_plan(EvalScaleConfig())  # the session's cluster: one node, 8 CPUs, no GPU
    assert plan.num_actors == 0 and "one node without GPUs" in plan.reason


def test_pool_loads_the_model_once_per_actor(ray_cluster, tiny_checkpoint):
    from chimed_ray.evaluation.records import EvalRequest

    requests = [EvalRequest(f"q/{i}", [{"role": "user", "content": f"问题{i}：发热怎么办？"}], options=["A", "B"])
                for i in range(20)]
    requests += [EvalRequest(f"g/{i}", [{"role": "user", "content": f"头痛{i}"}], max_new_tokens=3) for i in range(4)]
    common = {"model_path": str(tiny_checkpoint), "precision": "fp32", "max_prompt_length": 64, "batch_size": 2,
              "progress_bar": False}
    pooled = run_on_ray(requests, num_actors=2, **common)
    assert pooled.tasks == 6 and 1 <= pooled.model_loads <= 2  # 6 tasks of 4 rows, at most one load per actor
    again = run_on_ray(requests, num_actors=2, **common)  # the next checkpoint gets its own pool and loads
    assert 1 <= again.model_loads <= 2
    local = {response.uid: response for response in run_local(requests, **common)}
    assert {r.uid for r in pooled.responses} == set(local)
    for response in pooled.responses:
        assert response.option_logprobs == pytest.approx(local[response.uid].option_logprobs, abs=1e-4)
        assert response.text == local[response.uid].text
