"""Compiled rolling kernels (numba) over ``[instrument, day]`` float64 arrays, one row at a time.

The order-statistic operators (IdxMax/IdxMin, Quantile, Rank) and qlib's rolling regression (Slope, Rsquare,
Resi); :mod:`distgru.features.ops` documents their semantics. (Sum, Mean, Std and Corr:
:mod:`distgru.features.moments`.)

The kernels are ``nogil``: :func:`distgru.features.compute.compute_features` runs blocks of instruments on
threads. ``cache=True`` keeps the machine code on disk (``__pycache__``), so only the first run pays compilation.
Every input is float64 (one compiled signature per kernel) with ``±inf`` already read as NaN where pandas would.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def roll_argext(x, w, start, largest, out):  # pragma: no cover - compiled
    """qlib's IdxMax/IdxMin (see :func:`distgru.features.ops.rolling_argext`); NaN is anything not finite.

    O(D) per row: a monotone deque of the window's candidate extremes (ties keep the oldest, as argmax does)
    and a queue of its NaN positions (the oldest NaN wins).
    """
    n, d = x.shape
    cand = np.empty(d, dtype=np.int64)
    nans = np.empty(d, dtype=np.int64)
    for r in range(n):
        s0 = start[r]
        c_head = 0
        c_tail = 0
        n_head = 0
        n_tail = 0
        for t in range(d):
            if t >= s0:
                v = x[r, t]
                if not np.isfinite(v):
                    nans[n_tail] = t
                    n_tail += 1
                else:
                    while c_tail > c_head and (x[r, cand[c_tail - 1]] < v if largest else x[r, cand[c_tail - 1]] > v):
                        c_tail -= 1
                    cand[c_tail] = t
                    c_tail += 1
            lo = max(t - w + 1, s0, 0)
            while c_head < c_tail and cand[c_head] < lo:
                c_head += 1
            while n_head < n_tail and nans[n_head] < lo:
                n_head += 1
            if c_head == c_tail:  # no finite value in the window
                out[r, t] = np.nan
            elif n_head < n_tail:  # numpy's argmax/argmin return the first NaN
                out[r, t] = nans[n_head] - lo + 1
            else:
                out[r, t] = cand[c_head] - lo + 1


@njit(cache=True, nogil=True)
def roll_order_stats(x, w, qs, out, want_rank, rank):  # pragma: no cover - compiled
    """Linear-interpolated rolling quantiles of the finite values, levels ``qs``, into ``out[k]``, and with
    ``want_rank`` each day's percentile rank (average ties) among them into ``rank``, from one sorted window."""
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
            if want_rank:
                if not np.isfinite(val):
                    rank[r, i] = np.nan
                else:
                    below = 0
                    while buf[below] < val:
                        below += 1
                    equal = 0
                    while below + equal < m and buf[below + equal] == val:
                        equal += 1
                    rank[r, i] = (below + (equal + 1) / 2.0) / m
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


@njit(cache=True, nogil=True, error_model="numpy")
def roll_regression(x, w, slot, out):  # pragma: no cover - compiled
    """qlib's Slope / R² (unmasked r·r) / Resi into ``out[slot[k]]`` (k = 0, 1, 2; slot < 0: not wanted).

    qlib's Cython update order and rounding: the running sums Σy, Σy², Σ(position·y) updated as
    ``(s + -removed) + added``, the position sums as exact integers (window differences of cumulative sums), then
    the closed-form OLS.
    """
    n, d = x.shape
    v = np.empty(d)
    c_n = np.empty(d)
    c_j = np.empty(d)
    c_jj = np.empty(d)
    fw = float(w)
    for r in range(n):
        a_n = 0.0
        a_j = 0.0
        a_jj = 0.0
        for t in range(d):
            xv = x[r, t]
            day = float(t)
            if np.isnan(xv):
                v[t] = 0.0
            else:
                v[t] = xv
                a_n = a_n + 1.0
                a_j = a_j + day
                a_jj = a_jj + day * day
            c_n[t] = a_n
            c_j[t] = a_j
            c_jj[t] = a_jj
        y = 0.0
        y2 = 0.0
        xy = 0.0
        for t in range(d):
            vt = v[t]
            f = v[t - w] if t >= w else 0.0
            y_prev = y
            if t == 0:
                y = -f + vt
                y2 = -(f * f) + vt * vt
                xy = -0.0 + fw * vt
            else:
                y = (y + -f) + vt
                y2 = (y2 + -(f * f)) + vt * vt
                xy = (xy + -y_prev) + fw * vt
            if t >= w:
                cnt = c_n[t] - c_n[t - w]
                s_j = c_j[t] - c_j[t - w]
                s_jj = c_jj[t] - c_jj[t - w]
            else:
                cnt = c_n[t]
                s_j = c_j[t]
                s_jj = c_jj[t]
            off = fw - float(t)
            x_sum = cnt * off + s_j
            x2_sum = cnt * off * off + 2.0 * off * s_j + s_jj
            num = cnt * xy - x_sum * y
            sxx = cnt * x2_sum - x_sum * x_sum
            slope = num / sxx
            if slot[0] >= 0:
                out[slot[0], r, t] = slope
            if slot[1] >= 0:
                rr = num / np.sqrt(sxx * (cnt * y2 - y * y))
                out[slot[1], r, t] = rr * rr
            if slot[2] >= 0:
                interp = y / cnt - slope * (x_sum / cnt)
                out[slot[2], r, t] = x[r, t] - (slope * fw + interp)

