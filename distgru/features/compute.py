"""A BarPanel → Alpha158 / Alpha360 features and the label: a dense FeatureTable (``compute_features``) or the
wanted rows as a frame (``feature_frame``)."""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from distgru.config.schema import DEFAULT_LABEL
from distgru.data.panel import REQUIRED_FIELDS, BarPanel
from distgru.features.alpha158 import alpha158, group_of
from distgru.features.alpha360 import alpha360
from distgru.features.engine import ColumnSink, FrameSink, Sink, TableSink, evaluate_block, pack
from distgru.features.expr import Evaluator, ExpressionError, Node, extended_window, parse
from distgru.features.table import FeatureTable

log = logging.getLogger(__name__)

# name → (definitions, the progress-line group of a column)
FEATURE_SETS: dict[str, tuple[Callable[[], list[tuple[str, str]]], Callable[[str], str]]] = {
    "alpha158": (alpha158, group_of),
    "alpha360": (alpha360, lambda name: name.rstrip("0123456789")),
}


def feature_definitions(feature_set: str = "alpha158", columns: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, expression) of a feature set, filtered like qlib's FilterCol: native order kept, unknowns an error."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {sorted(FEATURE_SETS)}")
    defs = FEATURE_SETS[feature_set][0]()
    if columns is None:
        return defs
    names = {n for n, _ in defs}
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ValueError(f"{feature_set} has no column(s) {unknown}; valid names: {', '.join(n for n, _ in defs)}")
    keep = set(columns)
    return [(n, e) for n, e in defs if n in keep]


def referenced_fields(feature_set: str = "alpha158", columns: list[str] | None = None,
                      label: str = DEFAULT_LABEL) -> set[str]:
    """The ``$fields`` the features and the label read (Alpha158: open, high, low, close, volume, vwap)."""
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


def _prepare(panel: BarPanel, feature_set: str, columns: list[str] | None, label: str
             ) -> tuple[list[tuple[str, str]], list[Node], dict[str, np.ndarray]]:
    defs = feature_definitions(feature_set, columns)
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


def _query_start(panel: BarPanel, start: str | pd.Timestamp | None) -> int:
    return 0 if start is None else int(panel.calendar.searchsorted(pd.Timestamp(start), "left"))


def compute_features(panel: BarPanel, feature_set: str = "alpha158", columns: list[str] | None = None,
                     label: str = DEFAULT_LABEL, progress: bool = False, workers: int | None = None,
                     start: str | pd.Timestamp | None = None) -> FeatureTable:
    """Features and label with qlib's operator semantics, as float32, on the panel's whole [N, D] grid.

    ``start`` is the first day the caller wants, as in qlib's ``D.features(..., start_time)``: each expression
    is then evaluated on the calendar from ``start`` minus its extended window (qlib's
    ``get_extended_window_size``, :func:`~distgru.features.expr.extended_window`), exactly the series qlib's
    expression provider loads, so even the rounding state of pandas' rolling kernels matches qlib's; days before
    ``start`` are NaN. ``start=None`` (or the first calendar day) evaluates every expression on each
    instrument's full history, as qlib does for a query starting at the calendar's first day.

    Only the expressions ``columns`` needs are evaluated, sharing common sub-expressions. Days outside an
    instrument's first..last bar are NaN (qlib has no rows there); membership is carried through unmasked.
    A panel without ``$vwap`` gives NaN VWAP features, as qlib's public cn data does; the label must only use
    fields the panel has. ``workers`` threads (default: one per CPU) take blocks of instruments
    (:mod:`distgru.features.engine`); numpy's, pandas' and the compiled kernels release the GIL.
    """
    defs, nodes, fields = _prepare(panel, feature_set, columns, label)
    n, d = panel.shape
    first = _query_start(panel, start)
    values = np.full((n, d, len(defs)), np.nan, dtype=np.float32)
    labels = np.full((n, d), np.nan, dtype=np.float32)
    _evaluate(fields, defs, nodes, first, *data_range(fields), TableSink(values, labels, first), feature_set,
              progress, workers)
    return FeatureTable(calendar=panel.calendar, instruments=panel.instruments, names=tuple(n for n, _ in defs),
                        values=values, label=labels, membership=panel.membership)


def feature_frame(panel: BarPanel, feature_set: str = "alpha158", columns: list[str] | None = None,
                  label: str = DEFAULT_LABEL, start: str | pd.Timestamp | None = None,
                  end: str | pd.Timestamp | None = None, order: str = "datetime", progress: bool = False,
                  workers: int | None = None, label_name: str = "LABEL0") -> pd.DataFrame:
    """The member rows of ``start..end`` as a frame: ``compute_features(...).to_frame(start, end)`` without the
    dense table.

    Same values, bit for bit; one float32 column per feature plus the label. ``order="datetime"``: indexed
    (datetime, instrument) and sorted, as qlib's data handlers hold features; ``"instrument"``: indexed
    (instrument, datetime) and sorted, as qlib's ``D.features`` returns them (an instrument's rows adjacent, so
    each column is written in runs). Each instrument is evaluated only up to its last wanted row (plus the
    label's look-ahead), and results go straight into the frame's own array.
    """
    if order not in ("datetime", "instrument"):
        raise ValueError(f"order must be 'datetime' or 'instrument', got {order!r}")
    defs, nodes, fields = _prepare(panel, feature_set, columns, label)
    n, d = panel.shape
    first = _query_start(panel, start)
    stop = d if end is None else int(panel.calendar.searchsorted(pd.Timestamp(end), "right"))
    keep = np.zeros((n, d), dtype=bool)
    keep[:, first:stop] = panel.membership[:, first:stop]
    if order == "datetime":
        day_idx, inst_idx = np.nonzero(keep.T)
    else:
        inst_idx, day_idx = np.nonzero(keep)
    position = np.full((n, d), -1, dtype=np.int64)
    position[inst_idx, day_idx] = np.arange(len(day_idx))
    last_wanted = np.where(keep.any(axis=1), d - 1 - np.argmax(keep[:, ::-1], axis=1), -1)
    right = max(extended_window(node)[1] for node in nodes)
    lo_day, hi_day = data_range(fields)
    # Wanted rows without a bar on that day (a member span reaching past the data) stay NaN.
    uncovered = np.flatnonzero((day_idx < lo_day[inst_idx]) | (day_idx > hi_day[inst_idx]))
    end_day = np.where(last_wanted >= 0, np.minimum(hi_day, last_wanted + right), -1)
    names = [*(name for name, _ in defs), label_name]
    if order == "datetime":
        out = _small_pages((len(day_idx), len(names)))
        out[uncovered] = np.nan
        sink: Sink = FrameSink(out, position)
        data = out
    else:
        out = _small_pages((len(names), len(day_idx)))
        out[:, uncovered] = np.nan
        sink = ColumnSink(out, position)
        data = out.T
    _evaluate(fields, defs, nodes, first, lo_day, end_day, sink, feature_set, progress, workers)
    frame = pd.DataFrame(data, columns=names, copy=False)
    days, symbols = panel.calendar, pd.Index(panel.instruments)
    if order == "datetime":
        frame.index = pd.MultiIndex(levels=[days, symbols], codes=[day_idx, inst_idx],
                                    names=["datetime", "instrument"], verify_integrity=False)
    else:
        frame.index = pd.MultiIndex(levels=[symbols, days], codes=[inst_idx, day_idx],
                                    names=["instrument", "datetime"], verify_integrity=False)
    return frame


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
    group_name = FEATURE_SETS[feature_set][1]
    t0 = time.perf_counter()
    done = [0]
    lock = threading.Lock()
    _keep_freed_memory()

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


def _small_pages(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised float32 array on ordinary 4 KiB pages.

    numpy asks the kernel for transparent huge pages on large arrays; where the kernel then compacts memory to
    find them (``defrag=madvise``, a common default), the first writes to a frame-sized array stall for 2-3× as
    long as with small pages (0.9 s vs 0.37 s for 680 MB on the benchmark machine). Anonymous ``mmap`` pages
    come without that advice.
    """
    count = shape[0] * shape[1]
    buffer = mmap.mmap(-1, max(1, count * 4))
    return np.frombuffer(buffer, dtype=np.float32, count=count).reshape(shape)


def _keep_freed_memory() -> None:
    """Let glibc serve the engine's large temporaries from its heap and keep freed memory for reuse.

    By default every allocation over 128 KiB is a fresh mmap, and each of the engine's thousands of temporaries
    then costs a round of page faults (a third of the CPU time on a loaded host). Raising the mmap and trim
    thresholds (glibc ``mallopt``; a no-op elsewhere) keeps those pages mapped between temporaries.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: 32 MiB, glibc's maximum on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 1 << 26)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
