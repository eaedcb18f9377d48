"""Search space → trial configs, and the checks that run before any trial starts.

A trial's parameters are a flat ``{dotted key: value}`` mapping (Tune's ``config``); ``trial_config`` writes them
into the base config's dict and validates the result with the config loader, so a trial config is exactly what
``distgru train`` would load from YAML.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np

from distgru.config import Config, ConfigError, to_dict
from distgru.config.loader import from_dict, set_dotted
from distgru.config.tune import LISTS, Dist, TuneConfig
from distgru.processing.pipeline import check_config


def _plain(value: Any) -> Any:
    """Tune samples numpy scalars; the loader (rightly) rejects np.int64 where it wants an int."""
    return value.item() if isinstance(value, np.generic) else value


def base_dict(cfg: Config) -> dict[str, Any]:
    """The config as a mapping without its ``tune`` section: trial configs are plain training configs."""
    data = to_dict(cfg)
    data["tune"] = None
    return data


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """``base`` with each dotted key of ``params`` set, validated once; errors name the keys as ``tune.space``."""
    data = to_dict(base)  # the one copy: base is shared by every trial
    for key, value in params.items():
        set_dotted(data, key, _plain(value), f"tune.space.{key}")
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        keys = ", ".join(params)
        raise ConfigError(f"tune.space ({keys}): {e}") from None


def tune_of(cfg: Config) -> TuneConfig:
    if cfg.tune is None:
        raise ConfigError("tune: the config has no tune section; add one (see configs/tune_smoke.yaml)")
    return cfg.tune


def check_space(cfg: Config) -> list[Config]:
    """Validate the space against the config before Ray starts; returns the probe configs (each key at each of its
    probe values, then every key at its first value) for the data pre-flight checks."""
    tc = tune_of(cfg)
    if tc.scheduler.kind == "pbt" and cfg.resources.num_workers > 1:
        raise ConfigError(f"tune.scheduler.kind: 'pbt' needs single-worker trials (resources.num_workers 1): it "
                          "copies weights between trials through Tune checkpoints, which multi-worker (Ray Train) "
                          f"trials do not create; got resources.num_workers {cfg.resources.num_workers}")
    base = base_dict(cfg)
    dists = tc.dists
    # Data-affecting keys stay at a value of theirs, so every probe's panel is one the trials can get.
    firsts = {d.key: d.probe_values()[0] for d in dists if d.affects_data}
    probes = [trial_config(base, {**firsts, d.key: v}) for d in dists for v in d.probe_values()]
    probes.append(trial_config(base, {d.key: d.probe_values()[0] for d in dists}))
    for probe in probes:  # the feature and processor registries' verdicts (e.g. a model.input choice), still no data
        check_config(probe)
    return probes


def data_key(cfg: Config) -> str:
    """Hash of everything the processed panel depends on (not windows or training: step_len is the loop's)."""
    ds = cfg.dataset
    parts = {"data": to_dict(cfg.data), "features": to_dict(cfg.features), "processors": to_dict(cfg.processors),
             "segments": [list(ds.train), list(ds.valid), list(ds.test), ds.embargo]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_configs(cfg: Config) -> dict[str, Config]:
    """One config per distinct processed panel the trials can ask for (the product of the data-affecting
    choice/grid values), keyed by ``data_key``."""
    tc = tune_of(cfg)
    base = base_dict(cfg)
    data_dists = [d for d in tc.dists if d.affects_data]
    out: dict[str, Config] = {}
    for combo in itertools.product(*(d.args for d in data_dists)):
        trial = trial_config(base, {d.key: v for d, v in zip(data_dists, combo, strict=True)})
        out.setdefault(data_key(trial), trial)
    return out


def tune_domain(d: Dist, search: str) -> Any:
    """The Ray Tune domain of one entry (``search: grid`` expands choices exhaustively)."""
    from ray import tune

    if d.kind == "grid" or (d.kind == "choice" and search == "grid"):
        return tune.grid_search(list(d.args))
    if d.kind == "choice":
        return tune.choice(list(d.args))
    if d.kind == "uniform":
        return tune.uniform(*d.args)
    if d.kind == "loguniform":
        return tune.loguniform(*d.args)
    if d.kind == "quniform":
        return tune.quniform(*d.args)
    return tune.randint(*d.args)


def param_space(tc: TuneConfig) -> dict[str, Any]:
    return {d.key: tune_domain(d, tc.search) for d in tc.dists}


def pbt_mutations(tc: TuneConfig) -> dict[str, Any]:
    """PBT explores only train.* keys: the others (architecture, windows, data) are copied from the trial whose
    weights are cloned, so the checkpoint always fits the network."""
    return {d.key: (list(d.args) if d.kind in LISTS else tune_domain(d, "random"))
            for d in tc.dists if d.key.startswith("train.")}
