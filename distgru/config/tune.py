"""The ``tune:`` section of a training config: search space, metric, scheduler, search algorithm, resources.

The space maps dotted training keys to one distribution each::

    tune:
      space:
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        dataset.step_len: {choice: [5, 20]}
        model.hidden_size: {randint: [32, 129]}     # high excluded, as Tune's randint
        train.clip_value: {uniform: [1, 5]}
        model.num_layers: {grid: [1, 2]}            # every value, for each of num_samples

Syntax (distribution names, arity, empty lists, low > high) is checked here when the config loads; whether each key
exists and accepts the values is checked by ``check_space`` against the whole config, before any trial starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from distgru.config.loader import ConfigError

RANGES = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2}
"""Range distributions and their argument count ([low, high] or [low, high, q])."""
LISTS = ("choice", "grid")
"""Distributions over an explicit list of values."""
LOWER_IS_BETTER = ("valid_mse", "train_loss")
DATA_SECTIONS = ("data", "features", "processors")
"""Keys under these sections (and dataset segments) change the processed panel itself."""
PANEL_DATASET_KEYS = ("dataset.train", "dataset.valid", "dataset.test", "dataset.embargo")
FORBIDDEN_PREFIXES = ("tune", "resources", "name", "output_dir")
"""Keys a search may not vary: the search itself, the trial shape/placement, and where results go."""


@dataclass(frozen=True)
class Dist:
    """One parsed space entry."""

    key: str
    """Dotted training key, e.g. ``train.lr``."""
    kind: str
    """Distribution name: one of RANGES or LISTS."""
    args: tuple[Any, ...]
    """Its arguments: [low, high(, q)] for a range, the values for a list."""

    def probe_values(self) -> list[Any]:
        """Values that must all be valid for the key: every listed value, or a range's attainable ends."""
        if self.kind in LISTS:
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "randint":
            return [int(low), int(high) - 1]
        return [float(low), float(high)]

    @property
    def affects_data(self) -> bool:
        return self.key.split(".")[0] in DATA_SECTIONS or self.key in PANEL_DATASET_KEYS


def parse_entry(key: str, spec: Any) -> Dist:
    """``{kind: args}`` → Dist; errors name ``tune.space.<key>``, the value and what is allowed."""
    where = f"tune.space.{key}"
    kinds = [*RANGES, *LISTS]
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: {spec!r} is not a distribution; write one of {{{': ..., '.join(kinds)}: ...}}"
                          " e.g. {loguniform: [1.0e-4, 1.0e-2]}")
    kind, args = next(iter(spec.items()))
    if kind not in kinds:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; valid choices: {', '.join(kinds)}")
    if not isinstance(args, list | tuple):
        raise ConfigError(f"{where}: {kind} takes a list, got {args!r}")
    if kind in LISTS:
        if not args:
            raise ConfigError(f"{where}: {kind} list is empty; give at least one value")
        return Dist(key, kind, tuple(args))
    if len(args) != RANGES[kind]:
        shape = "[low, high, q]" if RANGES[kind] == 3 else "[low, high]"
        raise ConfigError(f"{where}: {kind} takes {shape}, got {args!r}")
    nums = []
    for a in args:
        try:
            nums.append(float(a))  # YAML 1.1 reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {kind} bound {a!r} is not a number") from None
    low, high = nums[0], nums[1]
    if kind == "randint":
        if not all(float(n).is_integer() for n in nums):
            raise ConfigError(f"{where}: randint bounds {list(args)} must be integers")
        if low >= high:
            raise ConfigError(f"{where}: randint low {args[0]} must be < high {args[1]} (high is excluded)")
        return Dist(key, kind, (int(low), int(high)))
    if low > high:
        raise ConfigError(f"{where}: {kind} low {args[0]} is greater than high {args[1]}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform low {args[0]} must be > 0")
    if kind == "quniform" and not (nums[2] > 0 and math.isfinite(nums[2])):
        raise ConfigError(f"{where}: quniform step q {args[2]} must be > 0")
    return Dist(key, kind, tuple(nums))


@dataclass(kw_only=True)
class SchedulerConfig:
    kind: Literal["asha", "fifo", "pbt"] = "asha"
    """asha: stop trials whose metric trails at rungs grace_period·rf^k (epochs); fifo: run every trial to its
    end; pbt: population-based training (single-worker trials only: it copies weights between trials)."""
    grace_period: int = 1
    """asha: epochs every trial runs before it can be stopped."""
    reduction_factor: float = 2.0
    """asha: keep the top 1/rf of trials at each rung."""
    max_t: int | None = None
    """asha: the last rung, in epochs. null: train.n_epochs."""
    perturbation_interval: int = 2
    """pbt: epochs between exploit/explore steps."""
    quantile_fraction: float = 0.25
    """pbt: the bottom fraction copies the weights and config of the top fraction."""
    resample_probability: float = 0.25
    """pbt: chance that an explored value is resampled from the space instead of perturbed (×0.8 / ×1.2)."""

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(f"tune.scheduler.grace_period: {self.grace_period} must be >= 1")
        if self.reduction_factor <= 1:
            raise ConfigError(f"tune.scheduler.reduction_factor: {self.reduction_factor} must be > 1")
        if self.max_t is not None and self.max_t < self.grace_period:
            raise ConfigError(f"tune.scheduler.max_t: {self.max_t} is below grace_period {self.grace_period}")
        if self.perturbation_interval < 1:
            raise ConfigError(f"tune.scheduler.perturbation_interval: {self.perturbation_interval} must be >= 1")
        if not 0 <= self.quantile_fraction <= 0.5:
            raise ConfigError(f"tune.scheduler.quantile_fraction: {self.quantile_fraction} must be in [0, 0.5]")
        if not 0 <= self.resample_probability <= 1:
            raise ConfigError(f"tune.scheduler.resample_probability: {self.resample_probability} must be in [0, 1]")


@dataclass(kw_only=True)
class TrialResources:
    cpu: float | None = None
    """Logical CPUs per trial. null: resources.cpus_per_worker. A multi-worker trial's own process (the Train
    driver) takes this; its workers reserve resources.cpus_per_worker each."""
    gpu: float | None = None
    """GPUs per single-worker trial (fractions pack several trials on a card). null: resources.gpus_per_worker
    when resources.use_gpu, else 0. Multi-worker trials reserve resources.gpus_per_worker per worker instead."""

    def __post_init__(self) -> None:
        for key in ("cpu", "gpu"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"tune.resources.{key}: {value} must be >= 0")


@dataclass(kw_only=True)
class TuneConfig:
    space: dict[str, Any] = field(default_factory=dict)
    """Dotted training key → distribution: {uniform|loguniform|randint: [low, high]}, {quniform: [low, high,
    q]}, {choice: [...]} or {grid: [...]}. Keys under data/features/processors (and dataset segments) must be
    choice or grid: each distinct data config is prepared once, before the trials."""
    metric: Literal["valid_ic", "valid_rank_ic", "valid_score", "valid_mse", "train_loss", "best_score"] = "valid_ic"
    """Per-epoch result the scheduler and the best-trial choice use (as the training loop reports it).
    best_score: the best valid_score so far (train.metric's, higher is better), the epoch whose weights early
    stopping keeps. ASHA compares trials by the metric's value at each rung epoch, so with valid_ic a trial whose
    best epoch came just before a rung can be stopped below trials it leads; best_score compares what each trial
    would keep."""
    mode: Literal["max", "min"] | None = None
    """max or min. null: min for valid_mse and train_loss, else max."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Trial scheduler (early stopping of poor trials, or PBT)."""
    search: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    """random: sample each distribution (grid entries still expand); grid: every entry must be choice or grid and
    all combinations run; optuna/hyperopt: model-based search (needs that package; no grid entries)."""
    num_samples: int = 8
    """Trials to sample (with grid entries: repeats of the whole grid)."""
    max_concurrent_trials: int | None = None
    """null: as many as the cluster holds at once (cluster GPUs / GPUs per trial, else CPUs / CPUs per trial),
    so trials never queue PENDING for resources."""
    resources: TrialResources = field(default_factory=TrialResources)
    """Resources per trial."""
    seed: int | None = None
    """Seed of the search algorithm's sampling (null: random). Each trial's training seed is train.seed."""
    score_test: bool = True
    """Score the test segment once the search ends: every trial's test IC / Rank IC in results.csv, the best
    trial's test predictions and metrics. false (``distgru tune --no-test``): the test segment is never scored,
    for a search whose choice must not see it; train the chosen config (best_config.yaml) with ``distgru train``
    to score it once."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"tune.num_samples: {self.num_samples} must be >= 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"tune.max_concurrent_trials: {self.max_concurrent_trials} must be >= 1")
        if not self.space:
            raise ConfigError("tune.space: empty; name at least one key, e.g. train.lr: {loguniform: [1e-4, 1e-2]}")
        dists = self.dists
        for d in dists:
            if d.key.split(".")[0] in FORBIDDEN_PREFIXES:
                raise ConfigError(f"tune.space.{d.key}: a search cannot vary {d.key.split('.')[0]}.*; set it in "
                                  "the config (it applies to every trial)")
            if d.affects_data and d.kind not in LISTS:
                raise ConfigError(f"tune.space.{d.key}: changes the processed data, so it must be choice or grid "
                                  f"(each value is prepared once before the trials), got {d.kind}")
        grids = [d.key for d in dists if d.kind == "grid"]
        if self.search == "grid":
            bad = [d.key for d in dists if d.kind not in LISTS]
            if bad:
                raise ConfigError(f"tune.search: 'grid' runs every combination, so every entry must be choice or "
                                  f"grid; {', '.join(bad)} are ranges (use search: random)")
        if self.search in ("optuna", "hyperopt") and grids:
            raise ConfigError(f"tune.search: {self.search!r} does not take grid entries ({', '.join(grids)}); "
                              "use choice")
        if self.scheduler.kind == "pbt" and not [d for d in dists if d.key.startswith("train.")]:
            raise ConfigError("tune.scheduler.kind: 'pbt' mutates train.* keys between trials; the space has none")

    @property
    def dists(self) -> list[Dist]:
        return [parse_entry(str(k), v) for k, v in self.space.items()]

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("min" if self.metric in LOWER_IS_BETTER else "max")
