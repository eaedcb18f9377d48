"""Bars → raw features (cached) → processors fitted on the fit window → the ProcessedPanel training consumes.

This is qlib's ``Alpha158(DataHandlerLP)`` + ``TSDatasetH`` segments: features computed on each instrument's full
history, the rows kept to the universe and to ``data.start .. data.end``, infer processors → DK_I, learn
processors on top → DK_L, and segments as day ranges of that calendar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import distgru.features
from distgru.config import Config, ConfigError
from distgru.data.load import load_bars
from distgru.data.panel import BarPanel, DataError
from distgru.features.table import FeatureTable
from distgru.processing import cache
from distgru.processing.panel import ProcessedPanel
from distgru.processing.processors import Processor, ProcessorState, build_chains, fit_processors
from distgru.processing.segments import day_slice, fit_window, label_horizon, segment_bounds
from distgru.processing.versions import feature_code_version, processing_code_version


@contextmanager
def _step(what: str, progress: bool) -> Iterator[None]:
    """``what … done in 1.2 s`` on stderr, so long steps show on the terminal without touching logs."""
    if progress:
        print(f"[distgru] {what} …", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    if progress:
        print(f"[distgru] {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def check_config(cfg: Config) -> tuple[list[Processor], list[Processor]]:
    """Check what the feature and processor registries decide (feature set, columns, label, processor names,
    options and chains, model.input against the set) before any work; returns the processor chains.

    Errors are ConfigErrors naming the key, the value and the valid choices."""
    feature_set = distgru.features.check_features(cfg.features)
    chains = build_chains(cfg.processors)
    if cfg.model.input == "flat" and not feature_set.flat:
        flat = ", ".join(name for name, s in distgru.features.FEATURE_SETS.items() if s.flat)
        raise ConfigError(f"model.input: 'flat' needs a feature set whose day is a [T, d_feat] history ({flat}); "
                          f"features.set is {feature_set.name!r}")
    if cfg.model.input == "window" and feature_set.flat:
        raise ConfigError(f"model.input: 'window' over {feature_set.name} is not a qlib setup; use model.input "
                          "'flat'")
    return chains


def feature_inputs(bars: BarPanel, feature_set: str, columns: list[str] | None, label: str,
                   start: str | None = None, end: str | None = None) -> dict[str, object]:
    """Everything raw features depend on: the cache key's parts (``start``/``end``: the days wanted, see
    :func:`features_for`)."""
    # The expressions themselves: a set registered outside distgru.features is not in the code version.
    definitions = distgru.features.feature_definitions(feature_set, columns)
    return {"data": bars.fingerprint(), "set": feature_set, "columns": columns, "definitions": definitions,
            "label": label, "start": start, "end": end, "code": feature_code_version()}


def features_for(bars: BarPanel, feature_set: str, columns: list[str] | None, label: str,
                 cache_dir: str | Path | None, progress: bool = False, inputs: dict[str, object] | None = None,
                 start: str | None = None, end: str | None = None) -> FeatureTable:
    """Raw features of ``bars``, read from ``cache_dir`` when an identical computation is stored there
    (``cache_dir`` None: always compute, store nothing).

    ``start``: the first day wanted, as qlib's ``D.features(..., start_time)``: each expression is evaluated from
    that day minus its look-back (qlib's query start rule); None evaluates every instrument's full history.
    ``start .. end`` are the table's days. Both are part of the cache key.
    """
    # The days go to the engine only when asked for: None is its default (the whole calendar).
    kwargs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}

    def compute() -> FeatureTable:
        return distgru.features.compute_features(bars, feature_set, columns=columns, label=label,
                                                 progress=progress, **kwargs)

    if cache_dir is None:
        with _step(f"computing {feature_set} features", progress):
            return compute()
    root = Path(cache_dir).expanduser()
    inputs = inputs or feature_inputs(bars, feature_set, columns, label, start, end)
    key = cache.make_key(inputs)
    # The cache's own log line says hit or miss (once); a "reading …" step here would announce a read that a
    # miss never makes.
    table = cache.load_features(root, key)
    if table is None:
        with _step(f"computing {feature_set} features", progress):
            table = compute()
        cache.save_features(root, key, table, inputs)
    return table


def _day_range(bars: BarPanel, start: str | None, end: str | None, what: str) -> tuple[int, int]:
    lo, hi = day_slice(bars.calendar, start, end)
    if lo == hi:
        raise ConfigError(f"{what} [{start} .. {end}] holds no trading day; the data covers "
                          f"{bars.calendar[0]:%Y-%m-%d} .. {bars.calendar[-1]:%Y-%m-%d}")
    return lo, hi


def _weight(bars: BarPanel, lo: int, hi: int) -> np.ndarray | None:
    weight = bars.fields.get("weight")
    return None if weight is None else np.ascontiguousarray(weight[:, lo:hi])


def prepare_panel(cfg: Config, progress: bool = True) -> tuple[ProcessedPanel, ProcessorState]:
    """The processed panel of ``cfg`` and the processors' fitted state (save it with the model)."""
    infer, learn = check_config(cfg)
    feats = cfg.features
    label = distgru.features.label_expression(feats)
    with _step(f"loading bars ({cfg.data.source})", progress):
        bars = load_bars(cfg.data)
    lo, hi = _day_range(bars, cfg.data.start, cfg.data.end, "data.start/end")
    calendar = bars.calendar[lo:hi]
    membership = np.ascontiguousarray(bars.membership[:, lo:hi])
    horizon = label_horizon(label)
    bounds = segment_bounds(calendar, cfg.dataset, horizon)
    fit_lo, fit_hi = fit_window(calendar, cfg.processors, bounds["train"])
    fit_start, fit_end = f"{calendar[fit_lo]:%Y-%m-%d}", f"{calendar[fit_hi - 1]:%Y-%m-%d}"

    # Training keeps each instrument's full history (start=None): data.start only cuts the panel afterwards.
    f_inputs = feature_inputs(bars, feats.set, feats.columns, label)
    p_inputs = {"features": cache.make_key(f_inputs), "processing": processing_code_version([*infer, *learn]),
                "days": [calendar[0].isoformat(), calendar[-1].isoformat()], "fit": [fit_start, fit_end],
                "infer": [p.spec() for p in infer], "learn": [p.spec() for p in learn]}
    root = Path(cfg.data.cache_dir).expanduser()
    p_key = cache.make_key(p_inputs)
    cached = cache.load_panel(root, p_key)
    if cached is not None:
        features, label_raw, label_learn, state = cached
    else:
        table = features_for(bars, feats.set, feats.columns, label, root, progress, f_inputs)
        with _step("fitting and applying processors", progress):
            fit_days = np.zeros(len(calendar), dtype=bool)
            fit_days[fit_lo:fit_hi] = True
            label_raw = np.ascontiguousarray(table.label[:, lo:hi])
            state, processed = fit_processors(
                np.array(table.values[:, lo:hi], dtype=np.float32), label_raw, membership, fit_days,
                infer=infer, learn=learn, feature_set=feats.set, feature_names=table.names, columns=feats.columns,
                label_expression=label, fit_start=fit_start, fit_end=fit_end)
            features, label_learn = processed.features, processed.label_learn
        cache.save_panel(root, p_key, calendar, bars.instruments, features, label_raw, label_learn, state,
                         p_inputs)
    # Checked after processing: "no member rows with a label" needs the label.
    segment_bounds(calendar, cfg.dataset, horizon, membership & ~np.isnan(label_raw))
    panel = ProcessedPanel(calendar=calendar, instruments=bars.instruments, feature_names=state.feature_names,
                           features=features, label_raw=label_raw, label_learn=label_learn, membership=membership,
                           segments=bounds, weight=_weight(bars, lo, hi))
    return panel, state


def prepare_inference(state: ProcessorState, cfg: Config, start: str, end: str,
                      progress: bool = True) -> ProcessedPanel:
    """Process ``start .. end`` with a saved state (no refit), for scoring new dates.

    The panel's one segment, ``test``, is ``start .. end``; the ``dataset.step_len`` trading days before it are
    included (processed the same way) so windows ending on ``start`` have their history, as TSDatasetH extends a
    segment. Features and label follow the state, not ``cfg.features``; ``cfg.data`` says where the bars are.
    """
    distgru.features.feature_definitions(state.feature_set, state.columns)  # before any work
    with _step(f"loading bars ({cfg.data.source})", progress):
        bars = load_bars(cfg.data)
    lo, hi = _day_range(bars, start, end, "predict start/end")
    first = max(0, lo - cfg.dataset.step_len)
    table = features_for(bars, state.feature_set, state.columns, state.label_expression, cfg.data.cache_dir,
                         progress)
    if table.names != state.feature_names:
        raise DataError(f"features computed now ({len(table.names)}: {', '.join(table.names[:5])} …) differ "
                        f"from the ones the processors were fitted on ({len(state.feature_names)}); the feature "
                        "code changed since training — retrain, or use the distgru version that trained it")
    membership = np.ascontiguousarray(bars.membership[:, first:hi])
    if not membership[:, lo - first:].any():
        raise ConfigError(f"predict [{start} .. {end}]: no instrument of the universe has a bar in it")
    label_raw = np.ascontiguousarray(table.label[:, first:hi])
    with _step("applying saved processors", progress):
        processed = state.transform(np.array(table.values[:, first:hi], dtype=np.float32), label_raw, membership)
    return ProcessedPanel(calendar=bars.calendar[first:hi], instruments=bars.instruments,
                          feature_names=state.feature_names, features=processed.features, label_raw=label_raw,
                          label_learn=processed.label_learn, membership=membership,
                          segments={"test": (lo - first, hi - first)}, weight=_weight(bars, first, hi))

