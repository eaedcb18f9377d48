"""Compiled rolling kernels (numba) over ``[instrument, day]`` float64 arrays, one row at a time.

The order-statistic operators (IdxMax/IdxMin, Quantile, Rank): they only compare and pick values, then do the
same few float operations, in the same order, as the numpy versions in :mod:`distgru.features.ops` (which remain
the fallback), so results are bit-identical. (Sum, Mean and Std call pandas' own Cython kernels row by row.)

The kernels are ``nogil``: :func:`distgru.features.compute.compute_features` runs blocks of instruments on
threads. ``cache=True`` keeps the machine code on disk (``__pycache__``), so only the first run pays compilation.
Every input is float64 (one compiled signature per kernel) with ``±inf`` already read as NaN where pandas would.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def roll_argext(x, w, start, largest, out):  # pragma: no cover - compiled
    """qlib's IdxMax/IdxMin (see :func:`distgru.features.ops.rolling_argext`); NaN is anything not finite."""
    n, d = x.shape
    for r in range(n):
        s0 = start[r]
        for t in range(d):
            lo = max(t - w + 1, s0, 0)
            best = -1
            cnt = 0
            nan_at = -1
            for j in range(lo, t + 1):
                v = x[r, j]
                if not np.isfinite(v):
                    if nan_at < 0:
                        nan_at = j
                    continue
                cnt += 1
                if best < 0 or (v > x[r, best] if largest else v < x[r, best]):
                    best = j
            if cnt == 0:
                out[r, t] = np.nan
            else:
                if nan_at >= 0:  # numpy's argmax/argmin return the first NaN
                    best = nan_at
                out[r, t] = best - lo + 1


@njit(cache=True, nogil=True)
def roll_quantiles(x, w, qs, out):  # pragma: no cover - compiled
    """Linear-interpolated rolling quantiles of the finite values, levels ``qs``, into ``out[k]``."""
    n, d = x.shape
    buf = np.empty(w)
    for r in range(n):
        m = 0
        for i in range(d):
            if i >= w:
                val = x[r, i - w]
                if np.isfinite(val):
                    k = 0
                    while buf[k] != val:
                        k += 1
                    for j in range(k, m - 1):
                        buf[j] = buf[j + 1]
                    m -= 1
            val = x[r, i]
            if np.isfinite(val):
                k = m
                while k > 0 and buf[k - 1] > val:
                    buf[k] = buf[k - 1]
                    k -= 1
                buf[k] = val
                m += 1
            for qi in range(qs.shape[0]):
                if m == 0:
                    out[qi, r, i] = np.nan
                    continue
                last = m - 1.0
                pos = qs[qi] * last
                f = np.floor(pos)
                lo = int(f)
                hi = min(f + 1.0, last)
                v_lo = buf[lo]
                out[qi, r, i] = v_lo + (buf[int(hi)] - v_lo) * (pos - f)


@njit(cache=True, nogil=True)
def roll_rank(x, w, out):  # pragma: no cover - compiled
    """Percentile rank (average ties) of each day's value among its window's finite values."""
    n, d = x.shape
    for r in range(n):
        for t in range(d):
            cur = x[r, t]
            if not np.isfinite(cur):
                out[r, t] = np.nan
                continue
            below = 0
            equal = 0
            cnt = 0
            for j in range(max(0, t - w + 1), t + 1):
                v = x[r, j]
                if np.isfinite(v):
                    cnt += 1
                    if v < cur:
                        below += 1
                    elif v == cur:
                        equal += 1
            out[r, t] = (below + (equal + 1) / 2.0) / cnt

