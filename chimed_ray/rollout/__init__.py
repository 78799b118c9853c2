"""Generation engines behind one interface (HF generate; vLLM when installed) and rollout prompts."""

from chimed_ray.rollout.base import GenerationEngine, SamplingParams, build_engine, trim_at_eos

__all__ = ["GenerationEngine", "SamplingParams", "build_engine", "trim_at_eos"]
