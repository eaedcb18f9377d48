"""Checks that run before any worker starts: the data against the config, then the cluster's resources and storage."""

from __future__ import annotations

from pathlib import Path

from distgru.config import Config, ConfigError
from distgru.processing.checks import check_panel
from distgru.processing.panel import ProcessedPanel
from distgru.training.capacity import autoscaler_ceiling, autoscaling, check_resources
from distgru.training.scoring import Samples, segment_samples
from distgru.training.storage import check_shared_storage


def check_data(cfg: Config, panel: ProcessedPanel) -> list[str]:
    """Every check of the config against the data, before Ray starts: errors (ConfigError naming the key to
    change) raise, warnings are returned for the caller to log once (``log_warnings``)."""
    warnings = check_panel(cfg, panel)
    check_samples(cfg, panel)
    return warnings


def check_samples(cfg: Config, panel: ProcessedPanel) -> Samples:
    """The checks a training run cannot start without (cheap: repeated by each run and trial)."""
    samples = segment_samples(panel)
    for seg, (inst, _) in samples.items():
        if len(inst) == 0:
            raise ConfigError(f"dataset.{seg}: {getattr(cfg.dataset, seg)} holds no {seg} samples in the data "
                              f"({panel.calendar[0]:%Y-%m-%d} .. {panel.calendar[-1]:%Y-%m-%d})")
    n_train, world = len(samples["train"][0]), cfg.resources.num_workers
    if cfg.train.batch_size > n_train:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {n_train} training samples")
    if cfg.train.batch_size < world:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is the global batch; it must be at least "
                          f"resources.num_workers ({world})")
    n_feat = len(panel.feature_names)
    if n_feat != cfg.model.d_feat if cfg.model.input == "window" else n_feat % cfg.model.d_feat:
        raise ConfigError(f"model.d_feat: {cfg.model.d_feat} does not fit the data's {n_feat} features per day "
                          f"(model.input {cfg.model.input!r})")
    return samples


def preflight(cfg: Config, panel: ProcessedPanel, storage: str | Path | None = None) -> Samples:
    """The checks a run repeats just before its workers start: its samples, the cluster's resources and, given the
    run's ``storage`` root (once per command: it starts a task on every node), that every node shares it."""
    import ray

    samples = check_samples(cfg, panel)
    scaling = autoscaling()
    check_resources(cfg.resources, ray.cluster_resources(), scaling, autoscaler_ceiling() if scaling else None)
    if storage is not None:
        check_shared_storage(storage, scaling)
    return samples
