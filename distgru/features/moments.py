"""Compiled rolling Sum, Mean, Std and Corr that reproduce pandas' own window kernels bit for bit.

qlib computes these with ``Series.rolling(w, min_periods=1)``, i.e. pandas' Cython ``roll_sum``, ``roll_mean``,
``roll_var`` and ``roll_corr`` (pandas 3.x): Kahan-compensated running sums with separate compensations for
added and removed values, pandas' rule that a window whose values are all one repeated value returns that value
exactly, the sign counts that clamp a mean's rounding residue to 0, Welford's update for the variance and the
anchored co-moments of the correlation, each recomputed from scratch when cancellation is suspected. The same
float operations in the same order give the same bits (Corr: to 1 ulp of float64, see :func:`roll_corr`),
without a Python call per instrument, and with ``±inf`` read as NaN inside the loop (pandas converts them first).

All take ``x`` [rows, D] (float32 or float64) and write float64 ``out``; fixed windows
``[max(0, t - w + 1), t]``, ``min_periods=1``. The loops are written out in full: the same updates as
inlined step functions on state tuples compiled 2-3x slower.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# pandas' InvCondTol: a variance update that shrinks the sum of squares below eps·1e3 of its previous value
# marks the window numerically unstable, and pandas recomputes it from scratch.
_INV_COND_TOL = np.finfo(np.float64).eps * 1e3


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _read(x, r, j):  # pragma: no cover - compiled
    v = np.float64(x[r, j])
    return v if np.isfinite(v) else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _kahan(x, w, mean, out):  # pragma: no cover - compiled
    """pandas' roll_sum (``mean`` False) or roll_mean (True)."""
    n, d = x.shape
    for r in range(n):
        for t in range(d):
            if t == 0 or w == 1:  # the first window, or one disjoint from the last: pandas starts afresh
                nobs = 0
                neg = 0
                total = 0.0
                comp_add = 0.0
                comp_rem = 0.0
                same = 0
                prev = _read(x, r, t)
            elif t >= w:
                v = _read(x, r, t - w)
                if v == v:
                    nobs -= 1
                    y = -v - comp_rem
                    s = total + y
                    comp_rem = s - total - y
                    total = s
                    if np.signbit(v):
                        neg -= 1
            v = _read(x, r, t)
            if v == v:
                nobs += 1
                y = v - comp_add
                s = total + y
                comp_add = s - total - y
                total = s
                if np.signbit(v):
                    neg += 1
                same = same + 1 if v == prev else 1
                prev = v
            if nobs == 0:
                out[r, t] = np.nan
            elif not mean:
                out[r, t] = prev * nobs if same >= nobs else total
            elif same >= nobs:
                out[r, t] = prev
            else:
                res = total / nobs
                # all values of one sign: a mean of the other sign is rounding residue
                out[r, t] = 0.0 if (neg == 0 and res < 0) or (neg == nobs and res > 0) else res


@njit(cache=True, nogil=True, error_model="numpy")
def roll_sum(x, w, out):  # pragma: no cover - compiled
    _kahan(x, w, False, out)


@njit(cache=True, nogil=True, error_model="numpy")
def roll_mean(x, w, out):  # pragma: no cover - compiled
    _kahan(x, w, True, out)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _add_var(v, nobs, mean, ssq, comp, unstable):  # pragma: no cover - compiled
    """Welford with Kahan compensation, as pandas' add_var; returns the updated state."""
    if v != v:
        return nobs, mean, ssq, comp, unstable
    nobs += 1.0
    prev_mean = mean - comp
    y = v - comp
    t = y - mean
    comp = t + mean - y
    mean = mean + t / nobs
    new_ssq = ssq + (v - prev_mean) * (v - mean)
    return nobs, mean, new_ssq, comp, unstable or ssq * _INV_COND_TOL > new_ssq


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _remove_var(v, nobs, mean, ssq, comp, unstable):  # pragma: no cover - compiled
    """pandas' remove_var; the last value out resets the mean and sum of squares (not the compensation)."""
    if v != v:
        return nobs, mean, ssq, comp, unstable
    nobs -= 1.0
    if nobs == 0.0:
        return nobs, 0.0, 0.0, comp, False
    prev_mean = mean - comp
    y = v - comp
    t = y - mean
    comp = t + mean - y
    mean = mean - t / nobs
    new_ssq = ssq - (v - prev_mean) * (v - mean)
    return nobs, mean, new_ssq, comp, unstable or ssq * _INV_COND_TOL > new_ssq


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _var_afresh(x, r, lo, t):  # pragma: no cover - compiled
    """pandas' recompute of a window from scratch: (nobs, mean, ssq, compensation of adds)."""
    nobs = mean = ssq = comp = 0.0
    unstable = False
    for j in range(lo, t + 1):
        nobs, mean, ssq, comp, unstable = _add_var(_read(x, r, j), nobs, mean, ssq, comp, unstable)
    return nobs, mean, ssq, comp


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _std(nobs, ssq):  # pragma: no cover - compiled
    """ddof=1 variance, then pandas' zsqrt (a negative rounding residue reads as 0)."""
    if nobs <= 1.0:
        return np.nan
    var = ssq / (nobs - 1.0)
    return np.sqrt(var) if var >= 0 else (0.0 if var < 0 else np.nan)


@njit(cache=True, nogil=True, error_model="numpy")
def roll_std(x, w, out):  # pragma: no cover - compiled
    """Sample standard deviation (ddof=1): pandas' roll_var, then its zsqrt.

    Two instruments advance together (rows r and s, the same row when the count is odd): each update waits on
    two divisions of the previous one, and interleaving two independent chains measured 1.7x faster. The state
    is kept in plain scalars; as tuples the same code compiled several times slower.
    """
    n, d = x.shape
    for r in range(0, n, 2):
        s = min(r + 1, n - 1)
        nr = mr = qr = ar = br = 0.0
        ns = ms = qs = as_ = bs = 0.0
        ur = us = False
        for t in range(d):
            lo = max(0, t - w + 1)
            recompute = t == 0 or lo >= t  # the first window, or one disjoint from the last (w == 1)
            if not recompute:
                if t >= w:
                    nr, mr, qr, br, ur = _remove_var(_read(x, r, t - w), nr, mr, qr, br, ur)
                    ns, ms, qs, bs, us = _remove_var(_read(x, s, t - w), ns, ms, qs, bs, us)
                nr, mr, qr, ar, ur = _add_var(_read(x, r, t), nr, mr, qr, ar, ur)
                ns, ms, qs, as_, us = _add_var(_read(x, s, t), ns, ms, qs, as_, us)
            if recompute or ur:
                nr, mr, qr, ar = _var_afresh(x, r, lo, t)
                br = 0.0
                ur = False
            if recompute or us:
                ns, ms, qs, as_ = _var_afresh(x, s, lo, t)
                bs = 0.0
                us = False
            out[r, t] = _std(nr, qr)
            out[s, t] = _std(ns, qs)


# pandas' MaxOriginMagnitude: the largest value the correlation accumulators anchor on.
_MAX_ORIGIN = np.sqrt(np.finfo(np.float64).max)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _corr_step(vx, vy, sign, st):  # pragma: no cover - compiled
    """pandas' add_corr (sign +1) / remove_corr (sign -1) on the state tuple
    (nobs, mean_x, mean_y, origin_x, origin_y, sxy, sxx, syy, peak_x, peak_y, unstable)."""
    nobs, mx, my, ox, oy, sxy, sxx, syy, px, py, unstable = st
    if vx != vx or vy != vy:
        return st
    if sign > 0:
        nobs += 1.0
        if nobs == 1.0:  # anchor on the window's first pair
            ox = vx if abs(vx) < _MAX_ORIGIN else 0.0
            oy = vy if abs(vy) < _MAX_ORIGIN else 0.0
        sx = vx - ox
        sy = vy - oy
        dx = sx - mx
        dy = sy - my
        mx += dx / nobs
        my += dy / nobs
        sxy += (sx - mx) * dy
        sxx += (sx - mx) * dx
        syy += (sy - my) * dy
    else:
        sx = vx - ox
        sy = vy - oy
        dx = sx - mx
        dy = sy - my
        nobs -= 1.0
        if nobs == 0.0:
            return (nobs, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False)
        mx -= dx / nobs
        my -= dy / nobs
        sxy -= (sx - mx) * dy
        sxx -= (sx - mx) * dx
        syy -= (sy - my) * dy
    dev = abs(sx - mx)
    if dev > px:
        px = dev
    dev = abs(sy - my)
    if dev > py:
        py = dev
    if (sxy != sxy or sxx != sxx or syy != syy or px * py * _INV_COND_TOL > abs(sxy)
            or px * px * _INV_COND_TOL > sxx or py * py * _INV_COND_TOL > syy):
        unstable = True
    return (nobs, mx, my, ox, oy, sxy, sxx, syy, px, py, unstable)


@njit(cache=True, nogil=True, error_model="numpy")
def roll_corr(a, b, w, out):  # pragma: no cover - compiled
    """pandas' roll_corr of ``a`` and ``b`` (pairs with a NaN skipped), clipped to [-1, 1].

    One deliberate difference: pandas' C code divides by ``pow(ssq_x * ssq_y, 0.5)`` and libm's ``pow`` is
    not correctly rounded, while ``sqrt`` is; in ~0.1 % of windows the two differ by 1 ulp of float64, which
    survives the float32 output essentially never (~2^-29 of those), and ``pow`` costs ~0.3 s on Alpha158.
    """
    n, d = a.shape
    for r in range(n):
        st = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False)
        for t in range(d):
            lo = max(0, t - w + 1)
            recompute = t == 0 or lo >= t
            if not recompute:
                if t >= w:
                    st = _corr_step(_read(a, r, t - w), _read(b, r, t - w), -1, st)
                st = _corr_step(_read(a, r, t), _read(b, r, t), 1, st)
            if recompute or st[10]:
                st = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False)
                for j in range(lo, t + 1):
                    st = _corr_step(_read(a, r, j), _read(b, r, j), 1, st)
                st = (st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8], st[9], False)
            nobs, sxy, sxx, syy = st[0], st[5], st[6], st[7]
            if nobs < 1.0 or sxx == 0.0 or syy == 0.0:
                out[r, t] = np.nan
            else:
                val = sxy / np.sqrt(sxx * syy)
                out[r, t] = 1.0 if val > 1.0 else (-1.0 if val < -1.0 else val)
