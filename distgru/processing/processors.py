"""qlib's data processors on dense ``[instrument, day, column]`` arrays, with their fitted state.

The flow is qlib's ``DataHandlerLP`` with ``process_type="append"``: raw features and label → infer processors
→ DK_I (what the model scores) → learn processors applied on top of DK_I → DK_L (training targets). Fitting runs
processor by processor, each fitted on the previous one's output, on the rows present in the fit window only.

"Rows present" is a bool ``[N, D]`` mask: the universe membership, narrowed by DropnaLabel in the learn chain.
Element-wise processors (RobustZScoreNorm, Fillna) transform every cell, present or not, which is harmless
(windows never read absent rows) and keeps the arrays NaN-free after Fillna. Cross-sectional processors rank or
standardise each day among the present rows and leave NaN elsewhere, because an absent row is no part of qlib's
per-datetime groups.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distgru.config import ConfigError, ProcessorSpec
from distgru.processing.versions import processing_code_version

EPS = np.float32(1e-12)
MAD_TO_STD = np.float32(1.4826)
RANK_SCALE = 3.46
"""qlib's CSRankNorm factor: a uniform rank minus 0.5 times 3.46 has about unit standard deviation."""
_COLUMN_CHUNK = 16
"""Columns per nanmedian call: bounds the temporary copy of the fit rows on wide feature sets."""


@dataclass
class Block:
    """The data flowing through a processor chain (arrays are modified in place)."""

    features: np.ndarray
    """float32 [N, D, F]."""
    label: np.ndarray
    """float32 [N, D]."""
    rows: np.ndarray
    """bool [N, D]: rows present (qlib's frame index)."""

    def group(self, spec: ProcessorSpec) -> np.ndarray:
        # The label as a one-column [N, D, 1] view, so every processor handles one array shape.
        return self.features if spec.fields_group == "feature" else self.label[..., None]

    def set_group(self, spec: ProcessorSpec, values: np.ndarray) -> None:
        if spec.fields_group == "feature":
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


def _apply_robust(values: np.ndarray, stats: Stats, clip: bool) -> np.ndarray:
    values -= stats["median"].astype(np.float32)
    values /= stats["scale"].astype(np.float32)
    if clip:
        np.clip(values, -3, 3, out=values)
    return values


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


def _apply_cs_rank(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for c in range(values.shape[-1]):
        out[..., c] = (_cross_section_rank(values[..., c], rows) - 0.5) * RANK_SCALE
    return out


def _apply_cs_zscore(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per day ``(x − mean) / std`` among present rows, std with ddof=1 as qlib's ``zscore`` (pandas ``std``)."""
    out = np.empty_like(values)
    for c in range(values.shape[-1]):
        x = np.where(rows, values[..., c], np.nan).astype(np.float64)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # a day with < 2 rows has no std (NaN, as pandas)
            mean = np.nanmean(x, axis=0)
            std = np.nanstd(x, axis=0, ddof=1)
            out[..., c] = (x - mean) / std
    return out


def _fit(spec: ProcessorSpec, block: Block, fit_rows: np.ndarray) -> Stats:
    if spec.name == "RobustZScoreNorm":
        return _fit_robust(block.group(spec), fit_rows)
    return {}  # the other processors learn nothing


def _apply(spec: ProcessorSpec, stats: Stats, block: Block) -> None:
    if spec.name == "DropnaLabel":
        block.rows &= ~np.isnan(block.label)
        return
    values = block.group(spec)
    if spec.name == "RobustZScoreNorm":
        out = _apply_robust(values, stats, spec.clip_outlier)
    elif spec.name == "Fillna":
        np.copyto(values, np.float32(spec.fill_value), where=np.isnan(values))
        out = values
    elif spec.name == "CSRankNorm":
        out = _apply_cs_rank(values, block.rows).astype(np.float32)
    else:
        out = _apply_cs_zscore(values, block.rows).astype(np.float32)
    block.set_group(spec, out)


def check_specs(infer: list[ProcessorSpec], learn: list[ProcessorSpec]) -> None:
    """Reject chains qlib rejects, or that a single DK_I feature array cannot represent."""
    for spec in infer:
        if spec.name == "DropnaLabel":
            # qlib raises too: dropping rows is learn-only (is_for_infer() is False), DK_I keeps every row.
            raise ConfigError("processors.infer: DropnaLabel is learn-only (qlib refuses it in infer_processors); "
                              "move it to processors.learn")
    for spec in learn:
        if spec.fields_group == "feature" and spec.name != "DropnaLabel":
            raise ConfigError(f"processors.learn: {spec.name} on features is not supported: training and scoring "
                              "share the infer-processed features (DK_I); put feature processors in "
                              "processors.infer")


def _run(specs: list[ProcessorSpec], stats: list[Stats] | None, block: Block,
         fit_days: np.ndarray | None) -> list[Stats]:
    fitted: list[Stats] = []
    for i, spec in enumerate(specs):
        if stats is None:
            assert fit_days is not None
            fitted.append(_fit(spec, block, block.rows & fit_days[None, :]))
        else:
            fitted.append(stats[i])
        _apply(spec, fitted[-1], block)
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
    infer: list[ProcessorSpec]
    learn: list[ProcessorSpec]
    fit_start: str
    fit_end: str
    infer_stats: list[Stats] = field(default_factory=list)
    learn_stats: list[Stats] = field(default_factory=list)

    def transform(self, features: np.ndarray, label: np.ndarray, membership: np.ndarray) -> Processed:
        """Apply the fitted chains (no refit). ``features`` is modified in place; pass a copy to keep it."""
        if features.shape[-1] != len(self.feature_names):
            raise ValueError(f"{features.shape[-1]} feature columns, state was fitted on {len(self.feature_names)}")
        block = Block(features, label.astype(np.float32, copy=True), membership.copy())
        _run(self.infer, self.infer_stats, block, None)
        return _finish_learn(self.learn, self.learn_stats, block, None)[0]

    def to_dict(self) -> dict:
        return {
            "processing_code": processing_code_version(),  # provenance: the code that fitted it
            "feature_set": self.feature_set, "feature_names": list(self.feature_names), "columns": self.columns,
            "label_expression": self.label_expression, "fit_start": self.fit_start, "fit_end": self.fit_end,
            "infer": [asdict(s) for s in self.infer], "learn": [asdict(s) for s in self.learn],
            "infer_stats": [_stats_to_json(s) for s in self.infer_stats],
            "learn_stats": [_stats_to_json(s) for s in self.learn_stats],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProcessorState:
        return cls(
            feature_set=data["feature_set"], feature_names=tuple(data["feature_names"]), columns=data["columns"],
            label_expression=data["label_expression"], fit_start=data["fit_start"], fit_end=data["fit_end"],
            infer=[ProcessorSpec(**s) for s in data["infer"]], learn=[ProcessorSpec(**s) for s in data["learn"]],
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


def _finish_learn(learn: list[ProcessorSpec], stats: list[Stats] | None, block: Block,
                  fit_days: np.ndarray | None) -> tuple[Processed, list[Stats]]:
    features, label_infer = block.features, block.label.copy()
    # The learn chain sees DK_I: same rows, same features; it must not touch the DK_I arrays kept above.
    learn_block = Block(features, block.label, block.rows.copy())
    fitted = _run(learn, stats, learn_block, fit_days)
    label_learn = np.where(learn_block.rows, learn_block.label, np.nan).astype(np.float32)
    return Processed(features, label_infer, label_learn), fitted


def fit_processors(features: np.ndarray, label: np.ndarray, membership: np.ndarray, fit_days: np.ndarray, *,
                   infer: list[ProcessorSpec], learn: list[ProcessorSpec], feature_set: str,
                   feature_names: tuple[str, ...], columns: list[str] | None, label_expression: str,
                   fit_start: str, fit_end: str) -> tuple[ProcessorState, Processed]:
    """Fit both chains on the rows present in ``fit_days`` (bool [D]) and process every day.

    ``features`` (float32 [N, D, F]) is modified in place; ``label`` and ``membership`` are not.
    """
    check_specs(infer, learn)
    block = Block(features, label.astype(np.float32, copy=True), membership.copy())
    infer_stats = _run(infer, None, block, fit_days)
    processed, learn_stats = _finish_learn(learn, None, block, fit_days)
    state = ProcessorState(feature_set=feature_set, feature_names=tuple(feature_names), columns=columns,
                           label_expression=label_expression, infer=list(infer), learn=list(learn),
                           fit_start=fit_start, fit_end=fit_end, infer_stats=infer_stats,
                           learn_stats=learn_stats)
    return state, processed
