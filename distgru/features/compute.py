"""``compute_features``: a BarPanel → a FeatureTable of Alpha158 / Alpha360 features and the label."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from distgru.config.schema import DEFAULT_LABEL
from distgru.data.panel import REQUIRED_FIELDS, BarPanel
from distgru.features.alpha158 import alpha158, group_of
from distgru.features.alpha360 import alpha360
from distgru.features.expr import Evaluator, ExpressionError, Node, extended_window, parse
from distgru.features.table import FeatureTable

log = logging.getLogger(__name__)

# name → (definitions, the progress-line group of a column)
FEATURE_SETS: dict[str, tuple[Callable[[], list[tuple[str, str]]], Callable[[str], str]]] = {
    "alpha158": (alpha158, group_of),
    "alpha360": (alpha360, lambda name: name.rstrip("0123456789")),
}
_STAGE = 16


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


def compute_features(panel: BarPanel, feature_set: str = "alpha158", columns: list[str] | None = None,
                     label: str = DEFAULT_LABEL, progress: bool = False, workers: int | None = None,
                     start: str | pd.Timestamp | None = None) -> FeatureTable:
    """Features and label with qlib's operator semantics, as float32.

    ``start`` is the first day the caller wants, as in qlib's ``D.features(..., start_time)``: each expression
    is then evaluated on the calendar from ``start`` minus its extended window (qlib's
    ``get_extended_window_size``, :func:`~distgru.features.expr.extended_window`), exactly the series qlib's
    expression provider loads, so even the rounding state of pandas' rolling kernels matches qlib's; days before
    ``start`` are NaN. ``start=None`` (or the first calendar day) evaluates every expression on each
    instrument's full history, as qlib does for a query starting at the calendar's first day.

    Only the expressions ``columns`` needs are evaluated, sharing common sub-expressions. Days outside an
    instrument's first..last bar are NaN (qlib has no rows there); membership is carried through unmasked.
    A panel without ``$vwap`` gives NaN VWAP features, as qlib's public cn data does; the label must only use
    fields the panel has. ``workers`` threads (default: one per CPU) each take a block of instruments: every
    operator works row by row, and numpy's and pandas' kernels release the GIL.
    """
    defs = feature_definitions(feature_set, columns)
    label_node = parse(label)
    missing = sorted(label_node.fields() - set(panel.fields))
    if missing:
        raise ExpressionError(f"label {label!r} uses missing field(s) {missing}; available: {sorted(panel.fields)}")
    fields = dict(panel.fields)
    if "vwap" not in fields:
        fields["vwap"] = np.full(panel.shape, np.nan, dtype=np.float32)
    nodes = [parse(expr) for _, expr in defs]
    Evaluator(fields, [*nodes, label_node], np.zeros(0))  # unknown fields fail here, before any work

    n, d = panel.shape
    first = 0 if start is None else int(panel.calendar.searchsorted(pd.Timestamp(start), "left"))
    # Roots grouped by the calendar day their series starts on: max(0, first - extended window).
    plan: dict[int, list[int]] = {}
    for j, node in enumerate([*nodes, label_node]):
        plan.setdefault(max(0, first - extended_window(node)[0]), []).append(j)
    values = np.empty((n, d, len(defs)), dtype=np.float32)
    labels = np.empty((n, d), dtype=np.float32)
    workers = max(1, min(_cpus() if workers is None else workers, n))
    blocks = [b for b in np.array_split(np.arange(n), workers) if len(b)]
    t0 = time.perf_counter()
    _keep_freed_memory()

    def run(i: int) -> None:
        rows = slice(int(blocks[i][0]), int(blocks[i][-1]) + 1)
        sub = {k: v[rows] for k, v in fields.items()}
        _evaluate_block(sub, defs, nodes, label_node, values[rows], labels[rows], first, plan,
                        FEATURE_SETS[feature_set][1] if progress and i == 0 else None)

    with ThreadPoolExecutor(len(blocks)) as pool:
        list(pool.map(run, range(len(blocks))))
    if progress:
        log.info("features %s: %d columns and label on %d×%d in %.1fs (%d threads)", feature_set, len(defs), n, d,
                 time.perf_counter() - t0, len(blocks))
    return FeatureTable(calendar=panel.calendar, instruments=panel.instruments, names=tuple(n for n, _ in defs),
                        values=values, label=labels, membership=panel.membership)


def _keep_freed_memory() -> None:
    """Let glibc serve the engine's large temporaries from its heap and keep freed memory for reuse.

    By default every allocation over 128 KiB is a fresh mmap, and each of the engine's thousands of 10-25 MB
    temporaries then costs a round of page faults (a third of the CPU time on a loaded host). Raising the mmap
    and trim thresholds (glibc ``mallopt``; a no-op elsewhere) keeps those pages mapped between temporaries.
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


def _evaluate_block(fields: dict[str, np.ndarray], defs: list[tuple[str, str]], nodes: list[Node], label: Node,
                    values: np.ndarray, labels: np.ndarray, first: int, plan: dict[int, list[int]],
                    group_name: Callable[[str], str] | None) -> None:
    """One block of instruments: fills ``values`` [n, D, F] and ``labels`` [n, D] in place.

    ``plan``: series start day → the roots (indices into ``nodes``, ``len(nodes)`` for the label) evaluated on the
    calendar from that day; their values are kept from day ``first`` on, earlier days are NaN.
    """
    lo_day, hi_day = data_range(fields)
    days = np.arange(values.shape[1])[None, :]
    outside = (days < np.maximum(lo_day, first)[:, None]) | (days > hi_day[:, None])
    values[:, :first] = np.nan
    labels[:, :first] = np.nan
    t_group = time.perf_counter()
    for q, members in sorted(plan.items()):
        sub = {k: v[:, q:] for k, v in fields.items()} if q else fields
        roots = [label if j == len(nodes) else nodes[j] for j in members]
        evaluator = Evaluator(sub, roots, np.maximum(lo_day - q, 0))
        skip = first - q
        cols = [j for j in members if j < len(nodes)]
        # Columns are staged feature-major and written _STAGE at a time: writing one column of the [N, D, F]
        # array touches a cache line per element, ten times slower than writing runs of adjacent features.
        stage = np.empty((min(_STAGE, max(1, len(cols))), values.shape[0], values.shape[1] - first),
                         dtype=np.float32)
        for k, j in enumerate(cols):
            np.copyto(stage[k % _STAGE], evaluator.value(nodes[j])[:, skip:], casting="unsafe")
            if (k + 1) % _STAGE == 0 or k + 1 == len(cols):
                done = cols[k - k % _STAGE:k + 1]
                _write_columns(values, first, done, stage[:len(done)])
            name = defs[j][0]
            if group_name is not None and not q and (j + 1 == len(defs) or
                                                     group_name(defs[j + 1][0]) != group_name(name)):
                now = time.perf_counter()
                log.info("features: %s done in %.2fs (%d/%d, first block of instruments)", group_name(name),
                         now - t_group, j + 1, len(defs))
                t_group = now
        if len(members) > len(cols):
            np.copyto(labels[:, first:], np.broadcast_to(evaluator.value(label), sub["close"].shape)[:, skip:],
                      casting="unsafe")
    # One pass over whole feature vectors (13% of cells on CSI300) rather than a masked pass per column.
    values[outside] = np.nan
    labels[outside] = np.nan


def _write_columns(values: np.ndarray, first: int, cols: list[int], stage: np.ndarray) -> None:
    """values[:, first:, cols] = stage.transpose(1, 2, 0), a few instruments at a time.

    A whole-array transposed copy strides through 16 planes of 10+ MB per output row and misses cache on every
    element; blocks of instruments keep the source rows (16 × rows × D) in cache.
    """
    contiguous = cols == list(range(cols[0], cols[-1] + 1))
    step = max(1, (1 << 19) // max(1, stage.shape[0] * stage.shape[2]))
    for lo in range(0, stage.shape[1], step):
        part = stage[:, lo:lo + step].transpose(1, 2, 0)
        if contiguous:
            values[lo:lo + step, first:, cols[0]:cols[-1] + 1] = part
        else:
            values[lo:lo + step, first:, cols] = part
