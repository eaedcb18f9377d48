"""A BarPanel → a feature set's columns and the label: a dense FeatureTable (``compute_features``, what training
reads) or the wanted rows as a frame (``feature_frame``, written straight into the frame's array)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from distgru.data.panel import REQUIRED_FIELDS, BarPanel
from distgru.features.engine import RowSink, Sink, TableSink, evaluate_block, pack
from distgru.features.expr import Evaluator, ExpressionError, Node, extended_window, parse
from distgru.features.sets import feature_definitions, get_feature_set
from distgru.features.table import FeatureTable, frame_index, frame_rows

log = logging.getLogger(__name__)


def referenced_fields(feature_set: str = "alpha158", columns: list[str] | None = None,
                      label: str | None = None) -> set[str]:
    """The ``$fields`` the features and the label (None: the set's default) read (Alpha158: open, high, low,
    close, volume, vwap)."""
    label = get_feature_set(feature_set).label if label is None else label
    nodes = [parse(expr) for _, expr in feature_definitions(feature_set, columns)] + [parse(label)]
    return set().union(*(node.fields() for node in nodes))


def data_range(fields: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each instrument's first and last day with a bar (start = D, end = -1 when it has none)."""
    has = np.zeros(fields["close"].shape, dtype=bool)
    for name in REQUIRED_FIELDS:
        has |= ~np.isnan(fields[name])
    any_ = has.any(axis=1)
    d = has.shape[1]
    start = np.where(any_, np.argmax(has, axis=1), d)
    end = np.where(any_, d - 1 - np.argmax(has[:, ::-1], axis=1), -1)
    return start, end


def _prepare(panel: BarPanel, feature_set: str, columns: list[str] | None, label: str | None
             ) -> tuple[list[tuple[str, str]], list[Node], dict[str, np.ndarray]]:
    """Definitions, parsed roots (the label last) and fields; every name and expression is checked here, before
    any work."""
    defs = feature_definitions(feature_set, columns)
    label = get_feature_set(feature_set).label if label is None else label
    label_node = parse(label)
    missing = sorted(label_node.fields() - set(panel.fields))
    if missing:
        raise ExpressionError(f"label {label!r} uses missing field(s) {missing}; available: {sorted(panel.fields)}")
    fields = dict(panel.fields)
    if "vwap" not in fields:
        fields["vwap"] = np.full(panel.shape, np.nan, dtype=np.float32)
    nodes = [*(parse(expr) for _, expr in defs), label_node]
    Evaluator(fields, nodes, np.zeros(0))  # unknown fields fail here, before any work
    return defs, nodes, fields


def _days(panel: BarPanel, start: str | pd.Timestamp | None, end: str | pd.Timestamp | None) -> tuple[int, int]:
    """Calendar indices [first, stop) of ``start .. end`` (None: the calendar's first / last day)."""
    calendar = panel.calendar
    first = 0 if start is None else int(calendar.searchsorted(pd.Timestamp(start), "left"))
    stop = len(calendar) if end is None else int(calendar.searchsorted(pd.Timestamp(end), "right"))
    return first, max(first, stop)


def compute_features(panel: BarPanel, feature_set: str = "alpha158", columns: list[str] | None = None,
                     label: str | None = None, progress: bool = False, workers: int | None = None,
                     start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None
                     ) -> FeatureTable:
    """Features and label with qlib's operator semantics, as float32, on the days ``start .. end`` of the panel
    (None: its first / last day) for every instrument.

    ``start`` is the first day the caller wants, as in qlib's ``D.features(..., start_time)``: each expression
    is then evaluated on the calendar from ``start`` minus its extended window (qlib's
    ``get_extended_window_size``, :func:`~distgru.features.expr.extended_window`), exactly the series qlib's
    expression provider loads, so even the rounding state of pandas' rolling kernels matches qlib's.
    ``start=None`` (or the first calendar day) evaluates every expression on each instrument's full history, as
    qlib does for a query starting at the calendar's first day. The label reads past ``end`` as far as it looks
    ahead.

    ``label`` None is the feature set's default label. Only the expressions ``columns`` needs are evaluated,
    sharing common sub-expressions. Days outside an instrument's first..last bar are NaN (qlib has no rows
    there); membership is carried through unmasked. A panel without ``$vwap`` gives NaN VWAP features, as qlib's
    public cn data does; the label must only use fields the panel has. ``workers`` threads (default: one per CPU)
    take blocks of instruments (:mod:`distgru.features.engine`); numpy's and the compiled kernels release the GIL.
    """
    defs, nodes, fields = _prepare(panel, feature_set, columns, label)
    first, stop = _days(panel, start, end)
    n = panel.shape[0]
    values = np.full((n, stop - first, len(defs)), np.nan, dtype=np.float32)
    labels = np.full((n, stop - first), np.nan, dtype=np.float32)
    first_bar, last_bar = data_range(fields)
    _evaluate(fields, defs, nodes, first, first_bar, _end_day(nodes, last_bar, np.full(n, stop - 1)),
              TableSink(values, labels, first), feature_set, progress, workers)
    return FeatureTable(calendar=panel.calendar[first:stop], instruments=panel.instruments,
                        names=tuple(name for name, _ in defs), values=values, label=labels,
                        membership=panel.membership[:, first:stop])


def feature_frame(panel: BarPanel, feature_set: str = "alpha158", columns: list[str] | None = None,
                  label: str | None = None, start: str | pd.Timestamp | None = None,
                  end: str | pd.Timestamp | None = None, order: str = "datetime", progress: bool = False,
                  workers: int | None = None, label_name: str = "LABEL0") -> pd.DataFrame:
    """The member rows of ``start..end`` as a frame: ``compute_features(...).to_frame(start, end, order=order)``
    without the dense table.

    Same values, bit for bit; one float32 column per feature plus the label. Each instrument is evaluated only
    up to its last wanted row (plus the label's look-ahead), and results go straight into the frame's own array
    (:class:`~distgru.features.engine.RowSink`): on CSI300's 16 years that skips a 1.9 GB table and its
    gather, a third of ``distgru features``' time and peak memory (BENCHMARKS.md).
    """
    defs, nodes, fields = _prepare(panel, feature_set, columns, label)
    first, stop = _days(panel, start, end)
    keep = np.zeros(panel.shape, dtype=bool)
    keep[:, first:stop] = panel.membership[:, first:stop]
    day_idx, inst_idx = frame_rows(keep, order)
    position = np.full(panel.shape, -1, dtype=np.int64)
    position[inst_idx, day_idx] = np.arange(len(day_idx))
    last_wanted = np.where(keep.any(axis=1), panel.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1), -1)
    first_bar, last_bar = data_range(fields)
    # Every cell of a row with a bar is written; rows without one (a member span past the data) stay NaN.
    out = np.empty((len(day_idx), len(defs) + 1), dtype=np.float32)
    out[(day_idx < first_bar[inst_idx]) | (day_idx > last_bar[inst_idx])] = np.nan
    _evaluate(fields, defs, nodes, first, first_bar, _end_day(nodes, last_bar, last_wanted),
              RowSink(out, position), feature_set, progress, workers)
    frame = pd.DataFrame(out, columns=[*(name for name, _ in defs), label_name], copy=False)
    frame.index = frame_index(panel.calendar, panel.instruments, day_idx, inst_idx, order)
    return frame


def _end_day(nodes: list[Node], last_bar: np.ndarray, last_wanted: np.ndarray) -> np.ndarray:
    """The last day to evaluate each instrument on: its last wanted day plus the label's look-ahead, within its
    bars (-1: none)."""
    right = max(extended_window(node)[1] for node in nodes)
    return np.where(last_wanted >= 0, np.minimum(last_bar, last_wanted + right), -1)


def _evaluate(fields: dict[str, np.ndarray], defs: list[tuple[str, str]], nodes: list[Node], first: int,
              first_bar: np.ndarray, end_day: np.ndarray, sink: Sink, feature_set: str, progress: bool,
              workers: int | None) -> None:
    """Every root (the features, then the label as root ``len(defs)``) on every instrument's days up to
    ``end_day`` (at most its last bar), block by block on ``workers`` threads, into ``sink``.

    Roots are grouped by the calendar day their series starts on, ``max(0, first - extended window)`` (qlib's
    query-start rule); an instrument's series starts there or at its first bar, whichever is later.
    """
    plan: dict[int, list[int]] = {}
    for j, node in enumerate(nodes):
        plan.setdefault(max(0, first - extended_window(node)[0]), []).append(j)
    work = [(q, block) for q, members in sorted(plan.items())
            for block in pack(np.maximum(first_bar, q), end_day)]
    group_name = get_feature_set(feature_set).group
    t0 = time.perf_counter()
    done = [0]
    lock = threading.Lock()

    def log_group(block_index: int) -> Callable[[int], None] | None:
        if not progress or block_index:
            return None
        t_group = [time.perf_counter()]

        def after(j: int) -> None:
            if j >= len(defs) or (j + 1 < len(defs) and group_name(defs[j + 1][0]) == group_name(defs[j][0])):
                return
            now = time.perf_counter()
            log.info("features: %s done in %.2fs (%d/%d, first block of %d instruments)", group_name(defs[j][0]),
                     now - t_group[0], j + 1, len(defs), len(work[0][1].rows))
            t_group[0] = now
        return after

    def run(i: int) -> None:
        q, block = work[i]
        evaluate_block(fields, block, [(j, nodes[j]) for j in plan[q]], sink, log_group(i))
        with lock:
            done[0] += 1
            k = done[0]
        if progress and (k * 10 // len(work) > (k - 1) * 10 // len(work)):
            elapsed = time.perf_counter() - t0
            log.info("features %s: %d/%d blocks, %.1fs elapsed, ETA %.1fs", feature_set, k, len(work), elapsed,
                     elapsed * (len(work) - k) / k)

    threads = max(1, min(_cpus() if workers is None else workers, len(work)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(len(work))))
    if progress:
        log.info("features %s: %d columns and label, %d instrument blocks in %.1fs (%d threads)", feature_set,
                 len(defs), len(work), time.perf_counter() - t0, threads)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
