"""Typed configs for every stage, loaded from YAML with `key=value` overrides."""

from chimed_ray.config.common import (
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ScaleConfig,
    TinyModelConfig,
    check_cluster_fits,
)
from chimed_ray.config.loader import ConfigError, check, dump_config, from_dict, load_config, to_dict
from chimed_ray.config.train import FaultConfig, PretrainConfig, SFTConfig, TrainStageConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "FaultConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "SFTConfig",
    "ScaleConfig",
    "TinyModelConfig",
    "TrainStageConfig",
    "check",
    "check_cluster_fits",
    "dump_config",
    "from_dict",
    "load_config",
    "to_dict",
]
