"""Config loading: YAML + key=value overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from chimed_ray.config import ConfigError, PretrainConfig, ScaleConfig, SFTConfig, check_cluster_fits, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_yaml_then_overrides_win():
    config = load_config(
        SFTConfig,
        CONFIGS / "sft" / "tiny.yaml",
        ["optim.lr=5e-5", "scale.zero_stage=3", "data.train_files=[a.jsonl,b.jsonl]", "model.tiny.hidden_size=128"],
    )
    assert config.optim.lr == 5e-5
    assert config.scale.zero_stage == 3
    assert config.data.train_files == ["a.jsonl", "b.jsonl"]
    assert config.model.tiny.hidden_size == 128
    # Untouched values come from the YAML, then from the dataclass defaults.
    assert config.optim.micro_batch_size == 8
    assert config.optim.max_grad_norm == 1.0


def test_every_bundled_config_loads():
    from chimed_ray.config import TrainStageConfig

    for stage, cls in (("pretrain", PretrainConfig), ("sft", SFTConfig)):
        for path in sorted((CONFIGS / stage).glob("*.yaml")):
            assert path.read_text(encoding="utf-8").startswith(f"# chimed-ray {stage} --config"), path
            assert isinstance(load_config(cls, path), TrainStageConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.micro_batch_size=2.5", "optim.micro_batch_size: expected an integer"),
        ("scale.zero_stage=4", "scale.zero_stage: must be 0, 1, 2 or 3, got 4"),
        ("scale.precision=bf16", "scale.precision: bf16 needs use_gpu=true"),
        ("scale.offload_params=true", "scale.offload_params: parameter offload needs zero_stage=3"),
        ("data.format=csvx", "data.format: expected one of"),
        ("model.tiny.hidden_size=66", "model.tiny.hidden_size: 66 is not divisible by num_attention_heads=4"),
        ("model.tiny.architecture=gpt2", "model.tiny.architecture: expected one of ['llama', 'qwen2']"),
        ("optim.epochs=0", "optim.epochs: must be >= 1"),
        ("logging=3", "logging: expected a mapping"),
        ("resume=maybe", "resume: expected true/false"),
        ("noequals", "expected key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(SFTConfig, CONFIGS / "sft" / "tiny.yaml", [override])
    assert message in str(info.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-4\n  epochs: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(SFTConfig, bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(SFTConfig, top)


def test_more_workers_than_the_cluster_is_an_error(ray_cluster):
    cpus = ray_cluster.cluster_resources()["CPU"]
    with pytest.raises(ConfigError, match="scale.num_workers: 100 workers"):
        check_cluster_fits(ScaleConfig(num_workers=100))
    with pytest.raises(ConfigError, match="GPUs"):
        check_cluster_fits(ScaleConfig(num_workers=1, use_gpu=True))
    check_cluster_fits(ScaleConfig(num_workers=int(cpus)))


def test_cpu_resolves_to_fp32_and_gpu_to_bf16():
    assert ScaleConfig().resolved_precision() == "fp32"
    assert ScaleConfig(use_gpu=True).resolved_precision() == "bf16"


def test_every_stage_yaml_loads_with_its_own_config_class():
    from chimed_ray.cli import STAGES, stage_config_class

    seen = 0
    for stage in STAGES:
        directory = CONFIGS / stage.replace("-", "_")
        for path in sorted(directory.glob("*.yaml")):
            if path.name == "serve_config.yaml":
                continue  # Ray Serve's own format, checked in tests/serving
            first_line = path.read_text(encoding="utf-8").splitlines()[0]
            runs_it = (f"chimed-ray {stage} --config" in first_line) or (f"chimed_ray {stage} --config" in first_line)
            assert first_line.startswith("#") and runs_it, path
            load_config(stage_config_class(stage), path)
            seen += 1
    assert seen >= 15
