"""The typed config tree. YAML files (configs/*.yaml) are serialised forms of ``Config``.

Each field's docstring is its documentation; ``__post_init__`` checks values that types cannot express.
Section names mirror qlib's workflow config (data handler → ``data``/``features``/``processors``,
``task.dataset`` → ``dataset``, ``task.model`` → ``model`` + ``train``, ``port_analysis_config`` → ``backtest``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from distgru.config.loader import ConfigError
from distgru.config.market import PROFILES, MarketConfig
from distgru.config.tune import TuneConfig


def check_date(key: str, value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: {value!r} is not a date; use YYYY-MM-DD") from None


def check_range(key: str, start: str | None, end: str | None) -> None:
    s, e = check_date(f"{key}[0]", start), check_date(f"{key}[1]", end)
    if s is not None and e is not None and s > e:
        raise ConfigError(f"{key}: start {start} is after end {end}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: {value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(kw_only=True)
class SyntheticConfig:
    n_instruments: int = 200
    """Instruments ever in the synthetic universe (about 85% are members on a given day)."""
    n_days: int = 600
    """Trading days generated (business days from ``start``)."""
    start: str = "2020-01-01"
    """First calendar day of the synthetic market."""
    seed: int = 0
    """Generator seed: the same seed gives the same market, bit for bit."""

    def __post_init__(self) -> None:
        if self.n_instruments < 10:
            raise ConfigError(f"data.synthetic.n_instruments: {self.n_instruments} < 10 (cross-sections need width)")
        if self.n_days < 120:
            raise ConfigError(f"data.synthetic.n_days: {self.n_days} < 120 (features look back 60 days)")
        check_date("data.synthetic.start", self.start)


@dataclass(kw_only=True)
class DataConfig:
    source: Literal["synthetic", "qlib", "parquet", "csv"] = "synthetic"
    """Where bars come from: the embedded synthetic market, a qlib provider directory, or a long-format file."""
    provider: str | None = None
    """qlib provider directory (``~/.qlib/qlib_data/cn_data``) when source is ``qlib``."""
    path: str | None = None
    """Parquet or CSV file in long format (datetime, instrument, open, high, low, close, volume[, factor, vwap,
    change, weight]) when source is ``parquet``/``csv``."""
    market: str = "csi300"
    """Universe: ``instruments/<market>.txt`` of the provider (point-in-time spans), or ``all``."""
    instruments: list[str] | None = None
    """Explicit symbols instead of the market; named instruments are not masked to membership spans (as D.features)."""
    benchmark: str | None = "market"
    """Benchmark index symbol (backtest); null for none; ``market``: the market profile's (cn: SH000300)."""
    benchmark_path: str | None = None
    """Long-format file (datetime, instrument, close) holding the benchmark's rows, when they are not in the bars'
    own file or provider. null: the bars' source."""
    start: str | None = None
    """First day loaded; history before the first segment feeds the look-back windows. null: all history."""
    end: str | None = None
    """Last day loaded. null: all history."""
    zero_volume_as_missing: bool = False
    """Treat zero-volume bars (suspensions kept as flat bars) as missing. Off when comparing with qlib."""
    cache_dir: str = "~/.cache/distgru"
    """Feature/panel cache directory (a local path)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Size and seed of the synthetic market (source ``synthetic``)."""

    def __post_init__(self) -> None:
        if self.source == "qlib" and not self.provider:
            raise ConfigError("data.provider: required when data.source is 'qlib' (a qlib provider directory)")
        if self.source in ("parquet", "csv") and not self.path:
            raise ConfigError(f"data.path: required when data.source is {self.source!r}")
        check_range("data.start/end", self.start, self.end)
        # Outside a Config (no profile known) "market" means the cn default; Config re-resolves it.
        self.market_benchmark = self.benchmark == "market"
        if self.market_benchmark:
            self.benchmark = PROFILES["cn"]["benchmark"]


@dataclass(kw_only=True)
class FeatureConfig:
    set: str = "alpha158"
    """Feature family, computed with qlib's exact operator semantics: a set registered in distgru/features
    (``alpha158``, ``alpha360``; checked by ``distgru.features.check_features`` before any work)."""
    columns: list[str] | None = None
    """Keep only these features (qlib's FilterCol: Alpha158's native order is kept, not this list's order)."""
    label: str | None = None
    """Label expression in qlib syntax; null: the feature set's default (for Alpha158 and Alpha360 qlib's return
    from close(T+1) to close(T+2)). ``distgru.features.label_expression`` resolves it."""
    label_horizon: int | None = None
    """Shortcut: when set, the label is ``Ref($close, -(h+1)) / Ref($close, -1) - 1`` and ``label`` is ignored."""

    def __post_init__(self) -> None:
        if self.columns is not None and not self.columns:
            raise ConfigError("features.columns: empty list; use null for all features")
        if self.label_horizon is not None and self.label_horizon < 1:
            raise ConfigError(f"features.label_horizon: {self.label_horizon} must be >= 1")


class ProcessorSpec(dict[str, Any]):
    """One processor as written in YAML: ``{name: <processor>, <option>: <value>, …}`` (``fields_group`` is an
    option too). Names and each processor's options are registered in distgru/processing/processors.py, which
    checks them before any work (config cannot import it)."""

    @property
    def name(self) -> str:
        return self["name"]


# Written as configs/*.yaml write them: specs compare as written (only the registry knows an option's default).
def _default_infer() -> list[ProcessorSpec]:
    return [ProcessorSpec(name="RobustZScoreNorm", fields_group="feature", clip_outlier=True),
            ProcessorSpec(name="Fillna", fields_group="feature")]


def _default_learn() -> list[ProcessorSpec]:
    return [ProcessorSpec(name="DropnaLabel", fields_group="label"),
            ProcessorSpec(name="CSRankNorm", fields_group="label")]


@dataclass(kw_only=True)
class ProcessorsConfig:
    fit_start: str | None = None
    """First day of the fit window (statistics are fitted only on it). null: the train segment's start."""
    fit_end: str | None = None
    """Last day of the fit window. null: the train segment's end."""
    infer: list[dict[str, Any]] = field(default_factory=_default_infer)
    """Applied to every segment (qlib's infer_processors): the data the model scores. Each entry is a
    :class:`ProcessorSpec` mapping."""
    learn: list[dict[str, Any]] = field(default_factory=_default_learn)
    """Applied on top of ``infer`` for training/validation targets (qlib's learn_processors)."""

    def __post_init__(self) -> None:
        check_range("processors.fit_start/fit_end", self.fit_start, self.fit_end)
        for chain in ("infer", "learn"):
            specs = [ProcessorSpec(s) for s in getattr(self, chain)]
            for i, spec in enumerate(specs):
                if not isinstance(spec.get("name"), str):
                    raise ConfigError(f"processors.{chain}[{i}].name: required, the processor's name (got {spec!r})")
            setattr(self, chain, specs)


@dataclass(kw_only=True)
class DatasetConfig:
    train: tuple[str, str] = ("2020-04-01", "2021-06-30")
    """Train segment [start, end], inclusive."""
    valid: tuple[str, str] = ("2021-07-01", "2021-11-30")
    """Validation segment (early stopping)."""
    test: tuple[str, str] = ("2021-12-01", "2022-04-20")
    """Test segment (predictions, IC, backtest)."""
    embargo: bool = False
    """Drop the last label-horizon days of train and valid so no label peeks across a boundary."""
    step_len: int = 20
    """Window length in trading days (qlib TSDatasetH step_len); ignored for model.input 'flat'."""

    def __post_init__(self) -> None:
        for name in ("train", "valid", "test"):
            check_range(f"dataset.{name}", *getattr(self, name))
        if pd.Timestamp(self.train[1]) >= pd.Timestamp(self.valid[0]):
            raise ConfigError(f"dataset.valid: starts {self.valid[0]}, not after train ends {self.train[1]}")
        if pd.Timestamp(self.valid[1]) >= pd.Timestamp(self.test[0]):
            raise ConfigError(f"dataset.test: starts {self.test[0]}, not after valid ends {self.valid[1]}")
        if self.step_len < 1:
            raise ConfigError(f"dataset.step_len: {self.step_len} must be >= 1")


@dataclass(kw_only=True)
class ModelConfig:
    name: Literal["gru", "lstm", "alstm"] = "gru"
    """Network: qlib's GRU, LSTM or ALSTM (attention over GRU states)."""
    d_feat: int = 20
    """Features per time step (20 for Alpha158-20, 6 for Alpha360)."""
    hidden_size: int = 64
    """Recurrent hidden size."""
    num_layers: int = 2
    """Stacked recurrent layers."""
    dropout: float = 0.0
    """Dropout between recurrent layers (and in ALSTM's attention net)."""
    input: Literal["window", "flat"] = "window"
    """``window``: step_len days of daily features (pytorch_gru_ts); ``flat``: one day's vector reshaped to
    [T, d_feat] (pytorch_gru with Alpha360)."""
    init: Literal["default", "orthogonal"] = "default"
    """Recurrent weight initialisation: PyTorch's default (as qlib) or orthogonal."""

    def __post_init__(self) -> None:
        for key in ("d_feat", "hidden_size", "num_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: {getattr(self, key)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: {self.dropout} must be in [0, 1)")


@dataclass(kw_only=True)
class ReweighterConfig:
    kind: Literal["none", "column", "time_decay", "class"] = "none"
    """Per-sample loss weights: none (all ones, as qlib), a ``weight`` data column, exponential decay by date, or a
    user class."""
    half_life_days: float = 250.0
    """time_decay: trading days for a sample's weight to halve, counted back from the train segment's end."""
    class_path: str | None = None
    """class: ``package.module:ClassName`` with ``reweight(dates, instruments) -> np.ndarray``."""

    def __post_init__(self) -> None:
        check_positive("train.reweighter.half_life_days", self.half_life_days)
        if self.kind == "class" and not self.class_path:
            raise ConfigError("train.reweighter.class_path: required when kind is 'class' (module:Class)")


@dataclass(kw_only=True)
class TrainConfig:
    n_epochs: int = 200
    """Maximum epochs."""
    lr: float = 2e-4
    """Learning rate."""
    batch_size: int = 800
    """Global batch size (split across workers)."""
    early_stop: int = 10
    """Patience: epochs without a better valid metric before stopping."""
    metric: Literal["loss", "ic", "rank_ic"] = "loss"
    """Early-stopping metric on the valid segment: qlib's -MSE, daily Pearson IC or Spearman Rank IC."""
    loss: Literal["mse", "huber"] = "mse"
    """Training loss: qlib's weighted mean of w*err^2 (divided by N), or weighted Huber (delta 1)."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Adam or plain SGD (qlib's 'gd'), no weight decay, no schedule."""
    clip: Literal["value", "norm", "none"] = "value"
    """Gradient clipping: by value (qlib), by global norm, or none."""
    clip_value: float = 3.0
    """Clip threshold (value or norm)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision on GPU; fp16 uses a grad scaler (unscaled before clipping). Under bf16 the recurrence
    itself runs in fp32 (cuDNN's RNN autocast would run it in fp16, without a scaler); the linear layers in bf16."""
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    """Adam's fused single-kernel step: ``auto`` uses it on CUDA only (``on`` on a CPU device is an error; the CPU
    path keeps the reference for-each step, bit for bit). SGD is never fused."""
    step: Literal["auto", "graph", "eager"] = "auto"
    """How a training step runs. ``graph``: the whole step (window gather, forward, loss, backward, clipping,
    optimizer) is captured once as a CUDA graph and replayed, one launch per step instead of hundreds; it needs a
    CUDA device, one worker (DDP's all-reduce inside a graph needs process-group settings Ray Train does not
    make), fp32 or bf16, and the panel resident on the device (``resources.panel_on_device``); a failed capture
    warns once and the run goes on eagerly. ``eager``: kernels launched one by one from Python. ``auto``:
    ``graph`` where it can run, else ``eager`` (always on CPU)."""
    checkpoint_every: int = 1
    """Epochs between checkpoints (the full training state, written by Ray Train after the epoch); the best epoch
    and the last one always get one. A restarted worker group replays the epochs after its last checkpoint (with
    ``deterministic``, to the same metrics). A Tune trial reports the epochs between without a checkpoint; under
    PBT keep 1 (an exploit clones the donor's latest checkpoint)."""
    seed: int = 0
    """Seed for model init, shuffling and dropout."""
    deterministic: bool = False
    """Deterministic kernels and RNG checkpointing: a resumed run ends exactly as an uninterrupted one."""
    reweighter: ReweighterConfig = field(default_factory=ReweighterConfig)
    """Per-sample loss weights."""

    def __post_init__(self) -> None:
        for key in ("n_epochs", "batch_size", "early_stop", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 1")
        check_positive("train.lr", self.lr)
        check_positive("train.clip_value", self.clip_value)


@dataclass(kw_only=True)
class ResourcesConfig:
    num_workers: int = 1
    """DDP workers (Ray Train). 1 runs a single worker."""
    use_gpu: bool = False
    """One GPU per worker (nccl); CPU workers use gloo."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker reserves."""
    gpus_per_worker: float = 1.0
    """GPUs each worker reserves when use_gpu (fractions share a card between single-worker trials)."""
    address: str | None = None
    """Ray cluster address; null starts Ray locally unless RAY_ADDRESS is set."""
    max_failures: int = 0
    """Worker failures (a crashed worker, a lost or reclaimed spot node) Ray Train recovers from by restarting the
    worker group from the last checkpoint on the nodes left; Tune restarts a failed trial as often. 0: the first
    failure ends the run (continue it with ``--resume``)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers on nodes. PACK: as few nodes as possible (the fastest all-reduce); SPREAD: on
    different nodes where it can (a lost node takes fewer ranks with it), packed where it cannot, so a group can
    restart on the nodes left; STRICT_SPREAD: one node per worker or the group does not start."""
    panel_on_device: Literal["auto", "always", "never"] = "auto"
    """Where a worker keeps the feature panel its windows are cut from. ``always``: on its device, copied once
    (no per-epoch host→device traffic); ``never``: in host memory (pinned on CUDA), each batch's windows gathered
    there and streamed to the device; ``auto``: on the device when the panel takes at most half of the device's
    free memory, else streamed."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"resources.num_workers: {self.num_workers} must be >= 1")
        check_positive("resources.cpus_per_worker", self.cpus_per_worker)
        check_positive("resources.gpus_per_worker", self.gpus_per_worker)
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            # Ray would pack several ranks on one card; each then sees it as cuda:0 and NCCL fails on duplicate GPUs.
            raise ConfigError(f"resources.gpus_per_worker: {self.gpus_per_worker} with {self.num_workers} workers "
                              "packs several DDP ranks on one GPU (NCCL refuses duplicate GPUs); N-worker runs need "
                              "whole GPUs (gpus_per_worker: 1). Fractions are for single-worker trials, e.g. "
                              "tune.resources.gpu: 0.25")


@dataclass(kw_only=True)
class BacktestConfig:
    topk: int = 50
    """Stocks held (TopkDropoutStrategy)."""
    n_drop: int = 5
    """Worst-ranked holdings replaced each day."""
    risk_degree: float = 0.95
    """Fraction of portfolio value invested."""
    account: float = 1e8
    """Initial cash."""
    open_cost: float | None = None
    """Cost rate on buys. null: the market profile's (``market.open_cost``)."""
    close_cost: float | None = None
    """Cost rate on sells. null: the market profile's."""
    min_cost: float | None = None
    """Minimum cost per trade. null: the market profile's."""
    limit_threshold: float | None = None
    """|change| at or beyond which a stock is at its price limit; as qlib's default (forbid_all_trade_at_limit)
    it can then be neither bought nor sold that day. ``inf``: no limit. null: the market profile's."""
    trade_unit: int | None = None
    """Shares per lot (rounded through factor). null: the market profile's."""
    trading_days: int | None = None
    """Trading days per year annualising the backtest's return and information ratio. null: the market
    profile's (cn 238 as qlib's ``_freq_scaler``, us 252)."""
    block_zero_volume: bool = False
    """Also treat zero-volume bars as untradable (off when comparing with qlib)."""

    def __post_init__(self) -> None:
        if self.topk < 1 or not 0 <= self.n_drop <= self.topk:
            raise ConfigError(f"backtest: need topk >= 1 and 0 <= n_drop <= topk, got {self.topk}, {self.n_drop}")
        if not 0 < self.risk_degree <= 1:
            raise ConfigError(f"backtest.risk_degree: {self.risk_degree} must be in (0, 1]")
        # Unset fields come from the market; outside a Config that is cn (qlib's defaults), and Config
        # re-resolves them from its own market (``for_market``). A plain attribute, so to_dict never writes it.
        self.from_market = tuple(k for k in MarketConfig().backtest_defaults() if getattr(self, k) is None)
        self._fill(MarketConfig())

    def _fill(self, market: MarketConfig) -> None:
        for key in self.from_market:
            setattr(self, key, market.backtest_defaults()[key])
        for key in ("trade_unit", "trading_days"):
            if getattr(self, key) < 1:
                raise ConfigError(f"backtest.{key}: {getattr(self, key)} must be >= 1")

    def for_market(self, market: MarketConfig) -> None:
        """Take the fields this config left unset from ``market`` (explicit ``backtest.*`` keys win)."""
        self._fill(market)


@dataclass(kw_only=True)
class Config:
    """A distgru run: data → features → processors → windows → training → evaluation."""

    name: str = "distgru"
    """Run name (prefix of the run directory)."""
    output_dir: str = "runs"
    """Where run directories are created: a local path, or for multi-node runs a POSIX path on storage that every
    node mounts (NFS/EFS, a ReadWriteMany volume; e.g. ``/mnt/cluster_storage/runs``), since rank 0 and trials may
    run on any node. Object-store URIs (``s3://``, ``gs://``) are not supported yet."""
    data: DataConfig = field(default_factory=DataConfig)
    """Bars: source, universe, date range."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Feature family, subset and label."""
    processors: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    """Normalisation fitted on the fit window."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """Segments and windows."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, early stopping, clipping, weights."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Workers and devices."""
    market: MarketConfig = field(default_factory=MarketConfig)
    """Trading rules of the data's market (profile cn/us/custom): annualisation days, price limit, lot, costs,
    default benchmark. Not ``data.market``, which is the universe."""
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    """TopK-Dropout backtest of the test predictions."""
    tune: TuneConfig | None = None
    """Search space and scheduler for ``distgru tune`` (see configs/tune_*.yaml); ignored by ``distgru train``."""

    def __post_init__(self) -> None:
        self.backtest.for_market(self.market)
        if getattr(self.data, "market_benchmark", False):
            self.data.benchmark = self.market.benchmark

    @property
    def window_len(self) -> int:
        """Days in one sample's window: flat (Alpha360) samples are step-1 windows whose row the model reshapes."""
        return 1 if self.model.input == "flat" else self.dataset.step_len
