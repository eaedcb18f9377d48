"""Typed configs: ``load_config(path, overrides)`` → ``Config``; see schema.py for every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distgru.config.loader import ConfigError, apply_override, from_dict, read_yaml, to_dict
from distgru.config.schema import (
    BacktestConfig,
    Config,
    DataConfig,
    DatasetConfig,
    FeatureConfig,
    ModelConfig,
    ProcessorsConfig,
    ProcessorSpec,
    ResourcesConfig,
    ReweighterConfig,
    SyntheticConfig,
    TrainConfig,
)

__all__ = [
    "BacktestConfig", "Config", "ConfigError", "DataConfig", "DatasetConfig", "FeatureConfig", "ModelConfig",
    "ProcessorSpec", "ProcessorsConfig", "ResourcesConfig", "ReweighterConfig", "SyntheticConfig", "TrainConfig",
    "config_from_dict", "load_config", "to_dict",
]


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, *, need_tune: bool = False) -> Config:
    """Validate a mapping (plus ``key=value`` overrides) into a Config; ``need_tune``: it must have a tune section."""
    data = to_dict(data)  # a deep copy, so overrides never touch the caller's dict
    for assignment in overrides or []:
        apply_override(data, assignment)
    if need_tune and data.get("tune") is None:
        raise ConfigError("tune: the config has no tune section; add one (see configs/tune_smoke.yaml)")
    return from_dict(Config, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the built-in ``presets.synthetic_default()`` when ``path`` is None) and apply overrides.

    A YAML file starts from the schema defaults (qlib's GRU settings), not from the preset."""
    if path is None:
        from distgru.config.presets import synthetic_default

        return config_from_dict(to_dict(synthetic_default()), overrides)
    return config_from_dict(read_yaml(path), overrides)
