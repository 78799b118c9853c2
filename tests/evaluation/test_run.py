"""End to end on the tiny model: in-process, on a 2-actor Ray Data pool, and against an endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chimed_ray.config.eval import DEFAULT_TASKS as EVAL_TASKS, EvalConfig
from chimed_ray.config.loader import ConfigError, load_config
from chimed_ray.evaluation.run import main, run_evaluation

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


def _config(output_dir: Path, overrides: list[str], files: dict[str, Path] | None = None) -> EvalConfig:
    config = load_config(EvalConfig, CONFIGS / "tiny.yaml", [f"output_dir={output_dir}", *overrides])
    if files is not None:
        config.files = {task: [str(files[task])] for task in EVAL_TASKS}
        config.few_shot_files = [str(files["mcq_dev"])]
        config.scales_file = str(files["scales"])
    return config


def _check_outputs(report: dict, output_dir: Path, models: list[str]) -> None:
    from PIL import Image

    assert list(report["models"]) == models
    saved = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    assert saved["models"] == report["models"]
    markdown = (output_dir / "report.md").read_text(encoding="utf-8")
    assert "## Summary" in markdown and all(f"| {m} |" in markdown for m in models)
    for chart in ("task_scores.png", "bias_profiles.png"):
        with Image.open(output_dir / chart) as image:
            image.verify()
        with Image.open(output_dir / chart) as image:
            assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    for name in models:
        for task in report["models"][name]["tasks"]:
            assert (output_dir / "predictions" / name / f"{task}.jsonl").stat().st_size > 0


def test_tiny_model_on_bundled_sets(tiny_checkpoint, tmp_path):
    config = _config(tmp_path, [f"checkpoints=[{{name: tiny, path: {tiny_checkpoint}}}]", "max_items=4",
                                "generation.max_new_tokens=8", "scale.progress_bar=false"])
    report = run_evaluation(config)
    model = report["models"]["tiny"]
    assert list(model["tasks"]) == list(EVAL_TASKS)
    assert all(0 <= model["tasks"][t]["metrics"]["accuracy"] <= 100 for t in ("mcq", "medqa"))
    cami, mica = model["tasks"]["cami"]["metrics"], model["tasks"]["mica"]["metrics"]
    directions = {v["direction"] for v in model["tasks"]["cami"]["breakdown"]["subscales"].values()}
    # A pooled CAMI score only when the sampled subscales all point one way (here 4 items: 1, 11,
    # 21, 31 are authoritarianism and social restrictiveness, both "higher = more stigmatising").
    assert ("mean" in cami) == (len(directions) == 1)
    assert all(1 <= value <= 5 for key, value in cami.items() if key.startswith("subscale/"))
    assert 1 <= mica["mean"] <= 6 and mica["total"] == pytest.approx(mica["mean"] * mica["n"])
    assert model["requests"] == sum(model["tasks"][t]["metrics"]["n"] for t in EVAL_TASKS)
    _check_outputs(report, tmp_path, ["tiny"])


def test_ray_data_two_actors_match_local_loop(ray_cluster, tiny_checkpoint, eval_files, tmp_path):
    checkpoint = f"checkpoints=[{{name: tiny, path: {tiny_checkpoint}}}]"
    common = [checkpoint, "few_shot=1", "generation.max_new_tokens=6", "scale.batch_size=2", "scale.progress_bar=false"]
    local = run_evaluation(_config(tmp_path / "local", common, eval_files))
    on_ray = run_evaluation(_config(tmp_path / "ray", [*common, "scale.num_actors=2"], eval_files))
    for task in EVAL_TASKS:
        expected = local["models"]["tiny"]["tasks"][task]["metrics"]
        assert on_ray["models"]["tiny"]["tasks"][task]["metrics"] == pytest.approx(expected)
    assert on_ray["models"]["tiny"]["requests"] == local["models"]["tiny"]["requests"]
    _check_outputs(on_ray, tmp_path / "ray", ["tiny"])
    by_subject = on_ray["models"]["tiny"]["tasks"]["mcq"]["breakdown"]["by_subject"]
    assert set(by_subject) == {"临床医学", "基础医学"}


def test_endpoint_runs_generation_tasks_only(fake_openai, eval_files, tmp_path):
    base_url, received = fake_openai
    config = _config(tmp_path, ["checkpoints=[]", f"endpoint.base_url={base_url}", "endpoint.model=chimed",
                                "endpoint.api_key=secret-key", "tasks=[mcq, ner, qa]", "scale.progress_bar=false"],
                     eval_files)
    report = run_evaluation(config)
    endpoint = report["models"]["endpoint"]
    assert list(endpoint["tasks"]) == ["ner", "qa"] and list(endpoint["skipped"]) == ["mcq"]
    # Doc 0 gets exactly its two gold entities, doc 1 two wrong ones: P = R = 2/4.
    assert endpoint["tasks"]["ner"]["metrics"]["f1"] == pytest.approx(50.0)
    assert len(received) == 2 + 2
    assert "secret-key" not in (tmp_path / "report.json").read_text(encoding="utf-8")


def test_cli_runs_tiny_config(tmp_path, capsys, tiny_checkpoint):
    code = main(["--config", str(CONFIGS / "tiny.yaml"), f"output_dir={tmp_path}",
                 f"checkpoints=[{{name: tiny, path: {tiny_checkpoint}}}]", "tasks=[mcq, cami]", "max_items=8",
                 "scale.progress_bar=false"])
    assert code == 0
    out = capsys.readouterr().out
    # CAMI per subscale (8 evenly spaced items cover all four), no pooled column.
    assert ("| model | mcq acc | cami authoritarianism | cami benevolence | cami social_restrictiveness | cami cmhi "
            "| items/s |") in out and "| tiny |" in out and "cami mean" not in out
    assert str(tmp_path / "report.md") in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks=[mcq, ceval]", "tasks[1]: expected one of"),
        ("checkpoints=[]", "checkpoints: give at least one checkpoint or an endpoint.base_url"),
        ("checkpoints=[{name: a}, {name: a}]", "model names must be unique"),
        ("files={cmmlu: [x.csv]}", "files.cmmlu: unknown task"),
        ("scale.num_actors=0  scale.gpus_per_actor=1", "scale.gpus_per_actor: GPUs are only used by Ray actors"),
        ("scale.num_actors=2  scale.precision=bf16", "scale.precision: bf16 needs gpus_per_actor > 0"),
        ("scale.num_actors=many", "scale.num_actors: expected int or 'auto', got 'many'"),
        ("scale.num_actors=-1", "scale.num_actors: expected auto, 0 (single-process loop) or the size"),
        ("scale.cpus_per_actor=0", "scale.cpus_per_actor: must be positive, got 0.0"),
        ("logging.mlflow.tracking_uri=mlruns", "logging.mlflow.tracking_uri: expected file:///dir"),
        ("logging.wandb.mode=online?", "logging.wandb.mode: expected one of"),
        ("endpoint.base_url=localhost:8000", "endpoint.base_url: expected an http(s) URL"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(EvalConfig, CONFIGS / "tiny.yaml", override.split("  "))


def test_scores_reach_mlflow_as_in_the_report(tiny_checkpoint, tmp_path, monkeypatch, tracked_runs):
    config = _config(tmp_path, [f"checkpoints=[{{name: tiny, path: {tiny_checkpoint}}}]", "tasks=[mcq, cami]",
                                "max_items=2", "scale.progress_bar=false", "plots=false",
                                f"logging.mlflow.tracking_uri=file://{tmp_path}/mlruns", "logging.mlflow.log_artifacts=true"])
    report = run_evaluation(config)
    assert report["models"]["tiny"]["path"].startswith("single-process loop (auto")
    from chimed_ray.utils.tracking import read_run_info

    run = read_run_info(tmp_path)["mlflow"]
    logged = tracked_runs.mlflow(run["tracking_uri"], run["run_id"])[0]
    assert logged == tracked_runs.jsonl(tmp_path)[0]
    for task in ("mcq", "cami"):
        for metric, value in report["models"]["tiny"]["tasks"][task]["metrics"].items():
            assert logged[f"tiny/{task}/{metric}"] == pytest.approx(value)


def test_missing_file_and_checkpoint_are_named(tmp_path, eval_files):
    from chimed_ray.utils.files import InputError

    config = _config(tmp_path, ["tasks=[qa]", f"files={{qa: [{tmp_path}/nope.jsonl]}}"])
    with pytest.raises(InputError, match="nope.jsonl: evaluation file not found"):
        run_evaluation(config)
    config = _config(tmp_path, ["tasks=[qa]", f"checkpoints=[{{name: sft, path: {tmp_path}/sft}}]"], eval_files)
    with pytest.raises(InputError, match="sft: checkpoint 'sft' is not an HF model directory"):
        run_evaluation(config)


def test_reward_task_scores_each_models_answers_and_adds_a_reward_column(tiny_checkpoint, tmp_path):
    """The reward model scores every model's greedy answers to held-out prompts; the summary table
    gets a reward column. A causal LM serves as the reward model here (its head is seeded)."""
    from chimed_ray.evaluation.report import summary_table
    from chimed_ray.evaluation.reward import score_answers

    config = _config(tmp_path, [f"checkpoints=[{{name: tiny, path: {tiny_checkpoint}}}]", "tasks=[mcq, reward]",
                                f"reward_model={tiny_checkpoint}", "max_items=3", "generation.max_new_tokens=4",
                                "scale.progress_bar=false"])
    report = run_evaluation(config)
    reward = report["models"]["tiny"]["tasks"]["reward"]
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "tiny" / "reward.jsonl").read_text("utf-8").splitlines()]
    assert reward["metrics"]["n"] == len(rows) == 3
    # The reported mean is the mean of the per-answer scores, and they are the reward model's scores.
    assert reward["metrics"]["reward"] == pytest.approx(sum(r["reward"] for r in rows) / 3)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    assert [r["reward"] for r in rows] == pytest.approx(score_answers(str(tiny_checkpoint), prompts,
                                                                      [r["answer"] for r in rows], 1024))
    assert "| model | mcq acc | reward | items/s |" in "\n".join(summary_table(report["models"]))


def test_reward_task_needs_a_reward_model(tmp_path):
    with pytest.raises(ConfigError, match="reward_model: the reward task needs a reward-model checkpoint"):
        _config(tmp_path, ["checkpoints=[{name: a, path: x}]", "tasks=[reward]"])
