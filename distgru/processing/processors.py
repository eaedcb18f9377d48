"""qlib's data processors on dense ``[instrument, day, column]`` arrays, with their fitted state.

The flow is qlib's ``DataHandlerLP`` with ``process_type="append"``: raw features and label → infer processors
→ DK_I (what the model scores) → learn processors applied on top of DK_I → DK_L (training targets). Fitting runs
processor by processor, each fitted on the previous one's output, on the rows present in the fit window only.

"Rows present" is a bool ``[N, D]`` mask: the universe membership, narrowed by DropnaLabel in the learn chain.
Element-wise processors (RobustZScoreNorm, Fillna) transform every cell, present or not, which is harmless
(windows never read absent rows) and keeps the arrays NaN-free after Fillna. Cross-sectional processors rank or
standardise each day among the present rows and leave NaN elsewhere, because an absent row is no part of qlib's
per-datetime groups.

Each processor is a :class:`Processor` subclass registered with :func:`register`: its fields are its options, it
fits and applies itself, and ``drops_rows`` carries qlib's infer/learn rule. Configs name it by class name; a new
processor is one class here plus its test.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from distgru.config import ConfigError, ProcessorsConfig
from distgru.config.loader import from_dict
from distgru.processing.versions import processing_code_version

EPS = np.float32(1e-12)
MAD_TO_STD = np.float32(1.4826)
RANK_SCALE = 3.46
"""qlib's CSRankNorm factor: a uniform rank minus 0.5 times 3.46 has about unit standard deviation."""
_COLUMN_CHUNK = 16
"""Columns per nanmedian call: bounds the temporary copy of the fit rows on wide feature sets."""


@dataclass
class ChainData:
    """The arrays a processor chain transforms in place: qlib's handler frame for one data key."""

    features: np.ndarray
    """float32 [N, D, F]."""
    label: np.ndarray
    """float32 [N, D]."""
    rows: np.ndarray
    """bool [N, D]: rows present (qlib's frame index)."""

    def group(self, fields_group: str) -> np.ndarray:
        # The label as a one-column [N, D, 1] view, so every processor handles one array shape.
        return self.features if fields_group == "feature" else self.label[..., None]

    def set_group(self, fields_group: str, values: np.ndarray) -> None:
        if fields_group == "feature":
            self.features = values
        else:
            self.label = values[..., 0]


Stats = dict[str, np.ndarray]


def _fit_robust(values: np.ndarray, fit_rows: np.ndarray) -> Stats:
    """Pooled per-column median and MAD·1.4826 over the fit rows, in float32 as qlib computes them."""
    n_cols = values.shape[-1]
    median = np.empty(n_cols, dtype=np.float32)
    scale = np.empty(n_cols, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN stats, as in qlib
        for lo in range(0, n_cols, _COLUMN_CHUNK):
            x = values[..., lo:lo + _COLUMN_CHUNK][fit_rows]
            m = np.nanmedian(x, axis=0)
            mad = np.nanmedian(np.abs(x - m), axis=0)
            median[lo:lo + x.shape[1]] = m
            scale[lo:lo + x.shape[1]] = (mad + EPS) * MAD_TO_STD
    return {"median": median, "scale": scale}


def _cross_section_rank(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per day, ``rank(pct=True)`` with average ties among present non-NaN rows; NaN elsewhere. x: [N, D]."""
    by_day = np.where(rows, x, np.nan).T.astype(np.float64)  # [D, N]
    order = np.argsort(by_day, axis=1, kind="stable")  # NaN sorts last
    s = np.take_along_axis(by_day, order, axis=1)
    n_days, n = s.shape
    starts = np.ones_like(s, dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]  # NaN != NaN, so each NaN is its own group and never ties
    flat_starts = np.flatnonzero(starts.ravel())
    flat_ends = np.append(flat_starts[1:], s.size) - 1
    group = np.cumsum(starts.ravel()) - 1
    # Average 1-based rank of a tie group = mean of its first and last positions within the day, plus one.
    mid = (flat_starts + flat_ends) / 2.0 - (flat_starts // n) * n + 1.0
    ranks = mid[group].reshape(n_days, n)
    count = np.count_nonzero(~np.isnan(s), axis=1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(np.isnan(s), np.nan, ranks / count)
    out = np.empty_like(pct)
    np.put_along_axis(out, order, pct, axis=1)
    return out.T


@dataclass(frozen=True, kw_only=True)
class Processor:
    """One of qlib's processors. Its dataclass fields are its config options (``{name: <class name>, <field>:
    value}``); subclasses registered with :func:`register` are what ``processors.infer/learn`` may name."""

    fields_group: Literal["feature", "label"] = "feature"
    """Columns it applies to."""
    drops_rows: ClassVar[bool] = False
    """It removes rows rather than changing values: learn-only (qlib's ``is_for_infer()`` is False, DK_I keeps
    every row), and allowed in the learn chain whatever its ``fields_group``."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def fit(self, data: ChainData, fit_rows: np.ndarray) -> Stats:
        """Statistics learned on ``fit_rows`` (bool [N, D]); most processors learn nothing."""
        return {}

    def apply(self, data: ChainData, stats: Stats) -> None:
        """Transform ``data`` in place with the fitted ``stats``."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The config mapping that builds this processor (every option, defaults included)."""
        return {"name": self.name, **asdict(self)}


PROCESSORS: dict[str, type[Processor]] = {}
"""Processor class name → class: the names ``processors.infer`` and ``processors.learn`` accept."""

P = TypeVar("P", bound=type[Processor])


def register(cls: P) -> P:
    """Class decorator making a :class:`Processor` subclass available to configs under its class name."""
    if cls.__name__ in PROCESSORS:
        raise ValueError(f"processor {cls.__name__!r} is already registered")
    PROCESSORS[cls.__name__] = cls
    return cls


@register
@dataclass(frozen=True, kw_only=True)
class RobustZScoreNorm(Processor):
    """Per column ``(x − median) / (MAD·1.4826)``, median and MAD pooled over the fit rows."""

    clip_outlier: bool = True
    """Clip the normalised values to [-3, 3]."""

    def fit(self, data: ChainData, fit_rows: np.ndarray) -> Stats:
        return _fit_robust(data.group(self.fields_group), fit_rows)

    def apply(self, data: ChainData, stats: Stats) -> None:
        values = data.group(self.fields_group)
        values -= stats["median"].astype(np.float32)
        values /= stats["scale"].astype(np.float32)
        if self.clip_outlier:
            np.clip(values, -3, 3, out=values)
        data.set_group(self.fields_group, values)


@register
@dataclass(frozen=True, kw_only=True)
class Fillna(Processor):
    """NaN → ``fill_value``."""

    fill_value: float = 0.0
    """The value NaNs become."""

    def apply(self, data: ChainData, stats: Stats) -> None:
        values = data.group(self.fields_group)
        np.copyto(values, np.float32(self.fill_value), where=np.isnan(values))
        data.set_group(self.fields_group, values)


@register
@dataclass(frozen=True, kw_only=True)
class DropnaLabel(Processor):
    """Drops the rows whose label is NaN (it always reads the label)."""

    fields_group: Literal["feature", "label"] = "label"
    """Ignored, as in qlib: the label decides."""
    drops_rows: ClassVar[bool] = True

    def apply(self, data: ChainData, stats: Stats) -> None:
        data.rows &= ~np.isnan(data.label)


@dataclass(frozen=True, kw_only=True)
class _CrossSectional(Processor):
    """Each column transformed day by day among the present rows (NaN elsewhere)."""

    def column(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One column [N, D] → float64 [N, D]."""
        raise NotImplementedError

    def apply(self, data: ChainData, stats: Stats) -> None:
        values = data.group(self.fields_group)
        out = np.empty_like(values)
        for c in range(values.shape[-1]):
            out[..., c] = self.column(values[..., c], data.rows)
        data.set_group(self.fields_group, out.astype(np.float32))


@register
@dataclass(frozen=True, kw_only=True)
class CSRankNorm(_CrossSectional):
    """Per day, ``(rank(pct=True) − 0.5) · 3.46`` among the present rows."""

    def column(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (_cross_section_rank(x, rows) - 0.5) * RANK_SCALE


@register
@dataclass(frozen=True, kw_only=True)
class CSZScoreNorm(_CrossSectional):
    """Per day, ``(x − mean) / std`` among the present rows, std with ddof=1 as qlib's ``zscore`` (pandas
    ``std``)."""

    def column(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        x = np.where(rows, x, np.nan).astype(np.float64)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # a day with < 2 rows has no std (NaN, as pandas)
            return (x - np.nanmean(x, axis=0)) / np.nanstd(x, axis=0, ddof=1)


def build(spec: Mapping[str, Any], key: str) -> Processor:
    """The processor a config mapping names, its options checked; ConfigErrors name ``key`` (``processors.infer[1]``),
    the value and the valid choices."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}: expected a mapping {{name: <processor>, <option>: <value>}}, got {spec!r}")
    name = spec.get("name")
    if not isinstance(name, str) or name not in PROCESSORS:
        raise ConfigError(f"{key}.name: {name!r} is not a processor; valid choices: {', '.join(sorted(PROCESSORS))}")
    return from_dict(PROCESSORS[name], {k: v for k, v in spec.items() if k != "name"}, prefix=key)


def check_chains(infer: Sequence[Processor], learn: Sequence[Processor]) -> None:
    """Reject chains qlib rejects, or that a single DK_I feature array cannot represent."""
    for i, p in enumerate(infer):
        if p.drops_rows:
            raise ConfigError(f"processors.infer[{i}]: {p.name} is learn-only (qlib refuses it in "
                              "infer_processors: DK_I keeps every row); move it to processors.learn")
    for i, p in enumerate(learn):
        if p.fields_group == "feature" and not p.drops_rows:
            raise ConfigError(f"processors.learn[{i}]: {p.name} on features is not supported: training and scoring "
                              "share the infer-processed features (DK_I); put feature processors in "
                              "processors.infer")


def build_chains(config: ProcessorsConfig) -> tuple[list[Processor], list[Processor]]:
    """The infer and learn chains of ``config``, every name, option and chain rule checked."""
    infer = [build(s, f"processors.infer[{i}]") for i, s in enumerate(config.infer)]
    learn = [build(s, f"processors.learn[{i}]") for i, s in enumerate(config.learn)]
    check_chains(infer, learn)
    return infer, learn


def _run(chain: Sequence[Processor], stats: list[Stats] | None, data: ChainData,
         fit_days: np.ndarray | None) -> list[Stats]:
    fitted: list[Stats] = []
    for i, processor in enumerate(chain):
        if stats is None:
            assert fit_days is not None
            fitted.append(processor.fit(data, data.rows & fit_days[None, :]))
        else:
            fitted.append(stats[i])
        processor.apply(data, fitted[-1])
    return fitted


@dataclass
class Processed:
    """Outputs of a processor chain on one panel slice."""

    features: np.ndarray
    """float32 [N, D, F]: DK_I features."""
    label_infer: np.ndarray
    """float32 [N, D]: the label after the infer processors (usually the raw label)."""
    label_learn: np.ndarray
    """float32 [N, D]: DK_L label, NaN where a row is absent from DK_L."""


@dataclass
class ProcessorState:
    """Everything needed to process new dates exactly as the training data was: specs, features, statistics."""

    feature_set: str
    feature_names: tuple[str, ...]
    columns: list[str] | None
    label_expression: str
    infer: list[Processor]
    learn: list[Processor]
    fit_start: str
    fit_end: str
    infer_stats: list[Stats] = field(default_factory=list)
    learn_stats: list[Stats] = field(default_factory=list)

    def transform(self, features: np.ndarray, label: np.ndarray, membership: np.ndarray) -> Processed:
        """Apply the fitted chains (no refit). ``features`` is modified in place; pass a copy to keep it."""
        if features.shape[-1] != len(self.feature_names):
            raise ValueError(f"{features.shape[-1]} feature columns, state was fitted on {len(self.feature_names)}")
        data = ChainData(features, label.astype(np.float32, copy=True), membership.copy())
        _run(self.infer, self.infer_stats, data, None)
        return _finish_learn(self.learn, self.learn_stats, data, None)[0]

    def to_dict(self) -> dict:
        return {
            # provenance: the code that fitted it
            "processing_code": processing_code_version([*self.infer, *self.learn]),
            "feature_set": self.feature_set, "feature_names": list(self.feature_names), "columns": self.columns,
            "label_expression": self.label_expression, "fit_start": self.fit_start, "fit_end": self.fit_end,
            "infer": [p.spec() for p in self.infer], "learn": [p.spec() for p in self.learn],
            "infer_stats": [_stats_to_json(s) for s in self.infer_stats],
            "learn_stats": [_stats_to_json(s) for s in self.learn_stats],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProcessorState:
        return cls(
            feature_set=data["feature_set"], feature_names=tuple(data["feature_names"]), columns=data["columns"],
            label_expression=data["label_expression"], fit_start=data["fit_start"], fit_end=data["fit_end"],
            infer=_saved_chain(data["infer"], "processor state infer"),
            learn=_saved_chain(data["learn"], "processor state learn"),
            infer_stats=[_stats_from_json(s) for s in data["infer_stats"]],
            learn_stats=[_stats_from_json(s) for s in data["learn_stats"]],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ProcessorState:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _stats_to_json(stats: Stats) -> dict[str, list[float | None]]:
    # float32 → Python float is exact, so the round trip restores every bit; NaN becomes null (strict JSON).
    return {k: [None if np.isnan(v) else float(v) for v in a] for k, a in stats.items()}


def _stats_from_json(data: dict[str, list[float | None]]) -> Stats:
    return {k: np.array([np.nan if v is None else v for v in a], dtype=np.float32) for k, a in data.items()}


_LEGACY_OPTIONS = frozenset({"clip_outlier", "fill_value"})
"""Before each processor had its own options, a saved state held every option on every processor."""


def _saved_chain(specs: list[dict[str, Any]], key: str) -> list[Processor]:
    """The processors of a saved state; a legacy option the processor does not take is dropped."""
    chain = []
    for i, spec in enumerate(specs):
        cls = PROCESSORS.get(spec.get("name", ""))
        if cls is not None:
            own = {f.name for f in dataclass_fields(cls)}
            spec = {k: v for k, v in spec.items() if k in own or k not in _LEGACY_OPTIONS}
        chain.append(build(spec, f"{key}[{i}]"))
    return chain


def _finish_learn(learn: Sequence[Processor], stats: list[Stats] | None, data: ChainData,
                  fit_days: np.ndarray | None) -> tuple[Processed, list[Stats]]:
    features, label_infer = data.features, data.label.copy()
    # The learn chain sees DK_I: same rows, same features; it must not touch the DK_I arrays kept above.
    learn_data = ChainData(features, data.label, data.rows.copy())
    fitted = _run(learn, stats, learn_data, fit_days)
    label_learn = np.where(learn_data.rows, learn_data.label, np.nan).astype(np.float32)
    return Processed(features, label_infer, label_learn), fitted


def fit_processors(features: np.ndarray, label: np.ndarray, membership: np.ndarray, fit_days: np.ndarray, *,
                   infer: list[Processor], learn: list[Processor], feature_set: str,
                   feature_names: tuple[str, ...], columns: list[str] | None, label_expression: str,
                   fit_start: str, fit_end: str) -> tuple[ProcessorState, Processed]:
    """Fit both chains on the rows present in ``fit_days`` (bool [D]) and process every day.

    ``features`` (float32 [N, D, F]) is modified in place; ``label`` and ``membership`` are not.
    """
    check_chains(infer, learn)
    data = ChainData(features, label.astype(np.float32, copy=True), membership.copy())
    infer_stats = _run(infer, None, data, fit_days)
    processed, learn_stats = _finish_learn(learn, None, data, fit_days)
    state = ProcessorState(feature_set=feature_set, feature_names=tuple(feature_names), columns=columns,
                           label_expression=label_expression, infer=list(infer), learn=list(learn),
                           fit_start=fit_start, fit_end=fit_end, infer_stats=infer_stats,
                           learn_stats=learn_stats)
    return state, processed
