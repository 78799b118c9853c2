"""`chimed-ray pipeline --config configs/pipeline/tiny.yaml`: ChiMed-GPT end to end.

pretrain -> SFT -> reward model -> RLHF (rejection sampling, PPO, or PPO on OpenRLHF) -> evaluation (base vs SFT vs
RLHF) -> serve the final checkpoint. Every stage config is loaded and validated before the first
stage starts; each stage reads the previous stage's `final/` checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from chimed_ray.config import ConfigError, load_config
from chimed_ray.config.pipeline import PipelineConfig
from chimed_ray.models import is_hf_checkpoint


@dataclass
class Step:
    """One pipeline stage: its validated config, how to run it, and where its result lands."""

    name: str
    config: Any
    run: Callable[[Any], Any]
    output: Path

    def done(self) -> bool:
        if self.name == "serve":
            return False
        if self.name == "eval":
            return (self.output / "report.json").is_file()
        return is_hf_checkpoint(self.output / "final")


def _load(stage: str, config_cls: type, pipeline: PipelineConfig, wiring: list[str]) -> Any:
    path = getattr(pipeline.configs, stage)
    if not Path(path).is_file():
        raise ConfigError(f"configs.{stage}: {path}: config file not found")
    # The user's overrides come last, so they win over the wiring.
    return load_config(config_cls, path, wiring + list(pipeline.overrides.get(stage, [])))


def plan(pipeline: PipelineConfig) -> list[Step]:
    """Build and validate every stage's config, wired output to input."""
    from chimed_ray.config import PretrainConfig, SFTConfig
    from chimed_ray.config.eval import EvalConfig
    from chimed_ray.config.rlhf import PPOConfig, RejectionSamplingConfig, RewardConfig
    from chimed_ray.config.serve import ServeConfig

    root = Path(pipeline.output_dir).resolve()
    resume = "false" if pipeline.force else "true"
    out = {name: root / name for name in ("pretrain", "sft", "reward", pipeline.rlhf, "eval")}
    final = {name: path / "final" for name, path in out.items()}
    steps = {
        "pretrain": Step("pretrain", _load("pretrain", PretrainConfig, pipeline, [f"output_dir={out['pretrain']}", f"resume={resume}"]), _train("pretrain"), out["pretrain"]),
        "sft": Step("sft", _load("sft", SFTConfig, pipeline, [f"output_dir={out['sft']}", f"model.path={final['pretrain']}", f"resume={resume}"]), _train("sft"), out["sft"]),
        "reward": Step("reward", _load("reward", RewardConfig, pipeline, [f"output_dir={out['reward']}", f"model.path={final['sft']}", f"resume={resume}"]), _reward, out["reward"]),
    }
    rlhf_wiring = [f"output_dir={out[pipeline.rlhf]}", f"model.path={final['sft']}", f"reward.path={final['reward']}", "reward.function=", f"resume={resume}"]
    if pipeline.rlhf in ("ppo", "openrlhf_ppo"):
        # openrlhf_ppo: the same PPO config (configs.ppo, overrides.ppo) run by OpenRLHF on GPUs.
        engine = ["engine=openrlhf"] if pipeline.rlhf == "openrlhf_ppo" else []
        config = _load("ppo", PPOConfig, pipeline, rlhf_wiring + engine)
        if config.engine == "openrlhf":
            from chimed_ray.integrations.openrlhf.flags import translate
            from chimed_ray.integrations.openrlhf.stage import handover_paths

            translate(config, handover_paths(config.output_dir))  # refuse now, not after hours of SFT
        steps["rlhf"] = Step("rlhf", config, _ppo, out[pipeline.rlhf])
    else:
        steps["rlhf"] = Step("rlhf", _load("rejection_sampling", RejectionSamplingConfig, pipeline, rlhf_wiring), _rejection_sampling, out["rejection_sampling"])
    checkpoints = [{"name": "base", "path": str(final["pretrain"])}, {"name": "sft", "path": str(final["sft"])}, {"name": "rlhf", "path": str(final[pipeline.rlhf])}]
    eval_wiring = [f"output_dir={out['eval']}", f"checkpoints={_json(checkpoints)}", f"reward_model={final['reward']}"]
    steps["eval"] = Step("eval", _load("eval", EvalConfig, pipeline, eval_wiring), _eval, out["eval"])
    served = [{"name": "chimed-rlhf", "path": str(final[pipeline.rlhf])}]
    steps["serve"] = Step("serve", _load("serve", ServeConfig, pipeline, [f"models={_json(served)}", "block=false"]), lambda cfg: _serve(cfg, pipeline), final[pipeline.rlhf])
    return [steps[name] for name in pipeline.stages]


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _train(task: str) -> Callable[[Any], Path]:
    def run(config: Any) -> Path:
        from chimed_ray.trainers.launch import run_ray_train

        return run_ray_train(task, config)

    return run


def _reward(config: Any) -> Path:
    from chimed_ray.trainers.reward import run_reward

    return run_reward(config)


def _ppo(config: Any) -> Path:
    if config.engine == "openrlhf":
        from chimed_ray.integrations.openrlhf import run_openrlhf_ppo

        return run_openrlhf_ppo(config)
    from chimed_ray.trainers.ppo import run_ppo

    return run_ppo(config)


def _rejection_sampling(config: Any) -> Path:
    from chimed_ray.trainers.rejection_sampling import run_rejection_sampling

    return run_rejection_sampling(config)


def _eval(config: Any) -> dict:
    from chimed_ray.evaluation.report import summary_table
    from chimed_ray.evaluation.run import run_evaluation

    report = run_evaluation(config)
    print("\n".join(summary_table(report["models"])), flush=True)
    return report


def _serve(config: Any, pipeline: PipelineConfig) -> str:
    """Serve the final checkpoint, send one question through the OpenAI API, print the answer.
    The server is shut down however the question ends (unless `serve.keep_alive` asks otherwise)."""
    from openai import OpenAI

    from chimed_ray.serving.app import resolve_api_key, shutdown_server, start_server

    url = start_server(config)
    try:
        model = config.models[0].served_name()
        client = OpenAI(base_url=url, api_key=resolve_api_key(config.http) or "none")  # the app's own key
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": pipeline.serve.question}],
            max_tokens=pipeline.serve.max_tokens, temperature=0.0,
        )
        print(f"[chimed-ray pipeline] endpoint: {url} (model {model})", flush=True)
        print(f"[chimed-ray pipeline] question: {pipeline.serve.question}", flush=True)
        print(f"[chimed-ray pipeline] answer:   {reply.choices[0].message.content}", flush=True)
        if pipeline.serve.keep_alive:
            print("[chimed-ray pipeline] serving; press Ctrl-C to stop", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        shutdown_server(config.http.app_name)
    return url


def run_pipeline(pipeline: PipelineConfig) -> dict[str, Any]:
    """Run (or skip, when already done) every planned stage; returns each stage's result."""
    steps = plan(pipeline)
    results: dict[str, Any] = {}
    for step in steps:
        if step.done() and not pipeline.force:
            print(f"[chimed-ray pipeline] {step.name}: done already ({step.output}); force=true redoes it", flush=True)
            results[step.name] = step.output
            continue
        print(f"[chimed-ray pipeline] {step.name}: starting", flush=True)
        started = time.perf_counter()
        results[step.name] = step.run(step.config)
        print(f"[chimed-ray pipeline] {step.name}: finished in {time.perf_counter() - started:.0f} s", flush=True)
    return results


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config

    pipeline, _ = parse_stage_config("pipeline", PipelineConfig, argv)
    results = run_pipeline(pipeline)
    print("\n[chimed-ray pipeline] outputs:", flush=True)
    for name in pipeline.stages:
        result = results.get(name)
        if name == "eval" and isinstance(result, dict):
            for key, path in result.get("files", {}).items():
                print(f"  eval/{key:<14} {path}")
        elif name == "serve":
            print(f"  {'endpoint':<19} {result} ({'serving' if pipeline.serve.keep_alive else 'stopped'})")
        else:
            print(f"  {name:<19} {result}")
    return 0
