"""Rolling and element-wise operators over ``[instrument, day]`` arrays with qlib's exact semantics.

Every function takes arrays with time on the last axis and treats all instruments at once. Rolling operators
follow qlib/pandas ``rolling(w, min_periods=1)``: partial windows at the start, NaN skipped inside windows
(IdxMax/IdxMin excepted), results float64 as pandas returns them, and ``±inf`` read as NaN (pandas turns inf into
NaN before its rolling kernels).

How each family is computed, all instruments in one call (no per-instrument Python loop):

- Mean, Sum, Std, Corr: pandas' own rolling kernels over a [D, N] frame that views the array, i.e. the exact
  code qlib runs per instrument, one Cython pass per column. Std is fixed up to exactly 0 on constant windows
  (see :func:`rolling_std`).
- Max, Min: van Herk / Gil-Werman blocks of ``w`` days (a window is one block's suffix plus the next block's
  prefix), O(D) whatever the window.
- Slope, Rsquare, Resi: window sums from float64 cumulative sums with positions relative to the window's last
  day (exact integers), the closed-form OLS of qlib's Cython kernels.
- Quantile, Rank, IdxMax, IdxMin: sliding-window views chunked over instruments, O(D·w), compared in float32 when
  the input is float32 (exact: these only order and pick values).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

try:  # compiled loops for the order statistics; the numpy versions below remain the fallback
    from distgru.features import kernels as _kernels
except ImportError:  # pragma: no cover - numba not installed
    _kernels = None

# qlib masks Corr and Rsquare where the rolling std is "close to zero" with np.isclose(std, 0, atol=2e-5).
STD_ATOL = 2e-5
# Elements of the [rows, D, w] window buffer of the order-statistic operators (16 MB of float32).
_CHUNK_ELEMENTS = 1 << 22


def check_window(w: object, op: str) -> int:
    if isinstance(w, float) and w.is_integer():
        w = int(w)
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise ValueError(f"{op}: window must be an integer >= 1, got {w!r} (qlib's expanding N=0 and EWM "
                         "0<N<1 forms are not supported)")
    return w


def _float(x: np.ndarray) -> np.ndarray:
    """float64 with inf → NaN, as pandas' rolling prepares its input."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isinf(x), np.nan, x)


def _finite(x: np.ndarray) -> np.ndarray:
    """inf → NaN; float32 stays float32 for operators that only compare and pick values (exact, half the
    memory traffic); anything else becomes float64."""
    x = np.asarray(x)
    x = x if x.dtype == np.float32 else np.asarray(x, dtype=np.float64)
    return np.where(np.isinf(x), np.nan, x)


# ---------------------------------------------------------------- element-wise


def ref(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` shifted ``n`` days along the calendar (n > 0: the past, n < 0: the future), NaN-filled.

    qlib's ``Ref(x, 0)`` repeats the first value of whatever range it loaded, which has no meaning on a full
    history; here ``n == 0`` is the identity.
    """
    n = int(n)
    if n == 0:
        return x
    out = np.full(x.shape, np.nan, dtype=np.result_type(x.dtype, np.float32))
    if abs(n) < x.shape[-1]:
        if n > 0:
            out[..., n:] = x[..., :-n]
        else:
            out[..., :n] = x[..., -n:]
    return out


def greater(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.maximum(a, b)


def less(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.minimum(a, b)


def compare(a: np.ndarray | float, b: np.ndarray | float, op: str) -> np.ndarray:
    """0/1 float32; NaN compares False, so ``Mean($close>Ref($close,1), d)`` is 0, not NaN, on day one."""
    fn = {">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal,
          "==": np.equal, "!=": np.not_equal}[op]
    with np.errstate(invalid="ignore"):
        return fn(a, b).astype(np.float32)


# ---------------------------------------------------------------- pandas-backed windows


def _rolling(x: np.ndarray, w: int) -> pd.core.window.rolling.Rolling:
    """pandas rolling over all instruments at once: a [D, N] frame viewing x (one Cython pass per column).

    These are the very kernels qlib calls per instrument (Kahan-summed means, Welford variance), so values agree
    with qlib's to the last bits wherever the arithmetic is well conditioned.
    """
    return pd.DataFrame(np.asarray(x).T, copy=False).rolling(w, min_periods=1)


def _unframe(frame: pd.DataFrame) -> np.ndarray:
    """Back to [N, D]; read-only under pandas' copy-on-write, so callers build new arrays rather than edit it."""
    return frame.to_numpy(dtype=np.float64).T


def _pandas_kernel(name: str):
    try:
        from pandas._libs.window import aggregations
    except ImportError:  # pragma: no cover - a pandas without the private module: the public API below
        return None
    return getattr(aggregations, name, None)


_ROLL_KERNELS = {name: _pandas_kernel(name) for name in ("roll_sum", "roll_mean", "roll_var")}


def _bounds(d: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """pandas' fixed-window bounds for ``rolling(w, min_periods=1)``: [max(0, t - w + 1), t + 1)."""
    end = np.arange(1, d + 1, dtype=np.int64)
    return np.maximum(end - w, 0), end


def _roll_rows(kernel, x: np.ndarray, w: int, *extra: int) -> np.ndarray:
    """pandas' Cython window kernel on each instrument's row: the code ``Series.rolling`` runs, without the
    frame machinery around it (several times the kernel's own cost)."""
    start, end = _bounds(x.shape[1], w)
    out = np.empty(x.shape)
    for i in range(x.shape[0]):
        out[i] = kernel(x[i], start, end, 1, *extra)
    return out


def _sum_count(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Window sums of the finite values and their counts, from float64 cumulative sums.

    The rounding error is ~1e-16 of the history's running total, far below float32 output precision; a window of
    zeros (a suspension's volume) sums to exactly 0, as pandas' kernel gives.
    """
    x = np.asarray(x)
    valid = np.isfinite(x)
    c = np.cumsum(np.where(valid, x, 0.0), axis=1, dtype=np.float64)
    s = c.copy()
    s[:, w:] -= c[:, :-w]
    k = np.cumsum(valid, axis=1, dtype=np.float64, out=c)
    n = k.copy()
    n[:, w:] -= k[:, :-w]
    return s, n


def rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    """pandas' rolling sum (Kahan-summed, exact on runs of one repeated value), as qlib computes it."""
    if _ROLL_KERNELS["roll_sum"] is not None:
        return _roll_rows(_ROLL_KERNELS["roll_sum"], _float(x), w)
    s, n = _sum_count(x, w)
    s[n == 0] = np.nan
    return s


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """pandas' rolling mean (Kahan-summed, exact on runs of one repeated value), as qlib computes it."""
    if _ROLL_KERNELS["roll_mean"] is not None:
        return _roll_rows(_ROLL_KERNELS["roll_mean"], _float(x), w)
    s, n = _sum_count(x, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        s /= n
    return s


def rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Sample standard deviation (ddof=1), NaN for a one-value window: pandas' own online (Welford) kernel.

    On a constant window (a suspension's flat price or zero volume) that kernel returns rounding drift left by
    values that have left the window, not 0, and the drift depends on where the series starts. qlib's values carry
    the same drift, amplified by ``/($volume+1e-12)`` in VSTD and WVMA, so it is kept bit for bit: callers start
    the series where qlib's query would (see :func:`distgru.features.expr.extended_window`).
    """
    if _ROLL_KERNELS["roll_var"] is None:
        return _unframe(_rolling(_finite(x), w).std())
    var = _roll_rows(_ROLL_KERNELS["roll_var"], _float(x), w, 1)
    # pandas' zsqrt: negative rounding residue reads as 0.
    negative = var < 0
    std = np.sqrt(var, out=var, where=~negative)
    std[negative] = 0.0
    return std


# ---------------------------------------------------------------- blocked extrema


def _blocks(x: np.ndarray, w: int, fill: float) -> np.ndarray:
    n, d = x.shape
    nb = -(-d // w)
    if nb * w != d:
        x = np.concatenate([x, np.full((n, nb * w - d), fill, dtype=x.dtype)], axis=1)
    return x.reshape(n, nb, w)


def _rolling_extreme(x: np.ndarray, w: int, fn: np.ufunc) -> np.ndarray:
    """van Herk / Gil-Werman: blocks of w days; a window is one block's suffix plus the next block's prefix."""
    n, d = x.shape
    b = _blocks(x, w, np.nan)
    pre = fn.accumulate(b, axis=2).reshape(n, -1)[:, :d]
    suf = fn.accumulate(b[:, :, ::-1], axis=2)[:, :, ::-1].reshape(n, -1)[:, :d]
    out = pre.copy()
    if d > w:
        # Day t's window starts at t-w+1, inside the previous block (unless t ends a block: then pre is whole).
        out[:, w:] = fn(pre[:, w:], suf[:, 1:d - w + 1])
    return out


def rolling_max(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_extreme(_finite(x), w, np.fmax).astype(np.float64)


def rolling_min(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_extreme(_finite(x), w, np.fmin).astype(np.float64)


def rolling_count(x: np.ndarray, w: int) -> np.ndarray:
    """Finite elements in each window."""
    c = np.cumsum(np.isfinite(x), axis=1, dtype=np.int32)
    out = c.astype(np.float64)
    out[:, w:] -= c[:, :-w]
    return out


# ---------------------------------------------------------------- correlation and regression


def _near_zero(std: np.ndarray) -> np.ndarray:
    # np.isclose(std, 0, atol=STD_ATOL) for real std (NaN is never close), without isclose's extra passes.
    with np.errstate(invalid="ignore"):
        return np.abs(std) <= STD_ATOL


def _roll_corr_kernel():
    try:
        from pandas._libs.window.aggregations import roll_corr
    except ImportError:  # pandas < 3 computes corr from rolling means and variances: use its public API
        return None
    return roll_corr


_ROLL_CORR = _roll_corr_kernel()


def rolling_corr(a: np.ndarray, b: np.ndarray, w: int, std_a: np.ndarray | None = None,
                 std_b: np.ndarray | None = None) -> np.ndarray:
    """pandas' rolling Pearson correlation (pairwise-valid elements); NaN where either input's rolling std ≈ 0.

    ``std_a``/``std_b``: the inputs' ``rolling_std`` when the caller has them already. The inputs are paired as
    pandas pairs two frames (``a + 0*b``, ``b + 0*a``) and each instrument goes straight to pandas' own
    ``roll_corr`` kernel, skipping the per-column Series machinery of ``DataFrame.rolling().corr()`` (ten times
    the kernel's cost); the numbers are the same.
    """
    a, b = _float(a), _float(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        if _ROLL_CORR is None:
            fa, fb = pd.DataFrame(a.T, copy=False), pd.DataFrame(b.T, copy=False)
            corr = _unframe(fa.rolling(w, min_periods=1).corr(fb))
        else:
            x, y = a + 0 * b, b + 0 * a
            d = a.shape[1]
            end = np.arange(1, d + 1, dtype=np.int64)
            start = np.maximum(end - w, 0)
            corr = np.empty(a.shape)
            for i in range(a.shape[0]):
                corr[i] = _ROLL_CORR(x[i], y[i], start, end, 1)
    std_a = rolling_std(a, w) if std_a is None else std_a
    std_b = rolling_std(b, w) if std_b is None else std_b
    corr[_near_zero(std_a) | _near_zero(std_b)] = np.nan
    return corr


def _window_sums(y: np.ndarray, w: int) -> np.ndarray:
    c = np.cumsum(y, axis=1)
    out = c.copy()
    out[:, w:] -= c[:, :-w]
    return out


def _running(removed: np.ndarray, added: np.ndarray) -> np.ndarray:
    """s_t = (s_{t-1} - removed_t) + added_t from s = 0, rounded step by step exactly as a C loop would.

    ``np.add.accumulate`` is a strictly sequential loop, so accumulating the interleaved sequence
    (-removed_1, added_1, -removed_2, ...) reproduces the rounding of qlib's Cython update() bit for bit.
    """
    n, d = added.shape
    seq = np.empty((n, 2 * d))
    np.negative(removed, out=seq[:, 0::2])
    seq[:, 1::2] = added
    np.add.accumulate(seq, axis=1, out=seq)
    return seq[:, 1::2]


def rolling_regression(x: np.ndarray, w: int, which: Sequence[str], std: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
    """qlib's Slope, Rsquare and Resi (its Cython ``rolling_slope``/``rsquare``/``resi``), NaNs skipped.

    ``which`` picks among ``slope``, ``rsquare`` (NaN where the rolling std of x ≈ 0; ``std`` is x's
    ``rolling_std`` if the caller has it) and ``resi``; they share one set of window sums. The sums are qlib's
    running sums with its update order and rounding: the value sums (Σy, Σy², Σ(position·y)) from sequential
    accumulations (:func:`_running`), the position sums as exact integers. So even degenerate windows (a
    suspension's flat price, where the result is rounding noise such as R² = 0) agree with qlib, provided the
    series starts where qlib's does.
    """
    rows = max(1, _CHUNK_ELEMENTS // (4 * max(1, x.shape[1])))
    if x.shape[0] > rows:
        # A block of instruments at a time: the ~20 temporaries stay in cache and under glibc's mmap threshold.
        parts = [rolling_regression(x[lo:lo + rows], w, which, None if std is None else std[lo:lo + rows])
                 for lo in range(0, x.shape[0], rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    x = np.asarray(x, dtype=np.float64)  # qlib feeds inf through; NaN is skipped
    valid = ~np.isnan(x)
    v = np.where(valid, x, 0.0)
    f = ref(v, w)
    f[:, :w] = 0.0
    y = _running(f, v)
    y2 = _running(f * f, v * v)
    y_prev = ref(y, 1)
    y_prev[:, 0] = 0.0
    xy = _running(y_prev, w * v)
    # Positions: the value of day j sits at w - (t - j) in day t's window; exact integer sums.
    day = np.arange(x.shape[1], dtype=np.float64)
    n = _window_sums(valid.astype(np.float64), w)
    s_j = _window_sums(np.where(valid, day, 0.0), w)
    s_jj = _window_sums(np.where(valid, day * day, 0.0), w)
    off = w - day
    x_sum = n * off + s_j
    x2_sum = n * off * off + 2.0 * off * s_j + s_jj
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        num = n * xy - x_sum * y
        sxx = n * x2_sum - x_sum * x_sum
        slope = num / sxx
        if "slope" in which:
            out["slope"] = slope
        if "rsquare" in which:
            r = num / np.sqrt(sxx * (n * y2 - y * y))
            std = rolling_std(x, w) if std is None else std
            out["rsquare"] = np.where(_near_zero(std), np.nan, r * r)
        if "resi" in which:
            interp = y / n - slope * (x_sum / n)
            out["resi"] = x - (slope * w + interp)
    return out


# ---------------------------------------------------------------- order statistics


def _window_chunks(x: np.ndarray, w: int, fill: float) -> Iterator[tuple[slice, np.ndarray]]:
    """Contiguous copies of the left-padded sliding windows [rows, D, w], a block of instruments at a time.

    One buffer serves every chunk: fresh 10+ MB temporaries each cost a round of page faults, which on a
    sandboxed or loaded host take longer than the sort or comparison itself.
    """
    n, d = x.shape
    padded = np.concatenate([np.full((n, w - 1), fill, dtype=x.dtype), x], axis=1)
    views = sliding_window_view(padded, w, axis=1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, d * w))
    buf = np.empty((min(rows, n), d, w), dtype=x.dtype)
    for lo in range(0, n, rows):
        part = buf[:min(rows, n - lo)]
        np.copyto(part, views[lo:lo + rows])
        yield slice(lo, lo + len(part)), part


def rolling_quantiles(x: np.ndarray, w: int, qs: Sequence[float]) -> list[np.ndarray]:
    """pandas' rolling quantile with linear interpolation, for several levels from one sort of each window."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"Quantile: level must be in [0, 1], got {q}")
    if _kernels is not None:
        out = np.empty((len(qs), *np.shape(x)))
        _kernels.roll_quantiles(_float(x), w, np.asarray(qs, dtype=np.float64), out)
        return list(out)
    x = _finite(x)
    n = rolling_count(x, w)
    outs = [np.full(x.shape, np.nan) for _ in qs]
    for rows, srt in _window_chunks(x, w, np.nan):
        srt.sort(axis=-1)  # NaN sorts last, so the first n are the window's values
        cnt = n[rows]
        last = np.maximum(cnt - 1.0, 0.0)
        for out, q in zip(outs, qs, strict=True):
            pos = q * last
            i = np.floor(pos)
            v_lo = np.take_along_axis(srt, i.astype(np.intp)[..., None], axis=-1)[..., 0].astype(np.float64)
            v_hi = np.take_along_axis(srt, np.minimum(i + 1, last).astype(np.intp)[..., None], axis=-1)
            v = v_lo + (v_hi[..., 0].astype(np.float64) - v_lo) * (pos - i)
            out[rows] = np.where(cnt > 0, v, np.nan)
    return outs


def rolling_rank(x: np.ndarray, w: int) -> np.ndarray:
    """Percentile rank of each day's value within its window (average ties), as pandas rank(pct=True)."""
    if _kernels is not None:
        out = np.empty(np.shape(x))
        _kernels.roll_rank(_float(x), w, out)
        return out
    x = _finite(x)
    n = rolling_count(x, w)
    out = np.empty(x.shape)
    flags = None
    for rows, win in _window_chunks(x, w, np.nan):
        flags = np.empty(win.shape, dtype=bool) if flags is None else flags[:len(win)]
        cur = x[rows, :, None]
        below = np.add.reduce(np.less(win, cur, out=flags), axis=-1, dtype=np.int32)
        equal = np.add.reduce(np.equal(win, cur, out=flags), axis=-1, dtype=np.int32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = (below + (equal + 1) / 2.0) / n[rows]
    out[np.isnan(x)] = np.nan
    return out


def rolling_argext(x: np.ndarray, w: int, start: np.ndarray, largest: bool) -> np.ndarray:
    """qlib's IdxMax/IdxMin: 1-based position of the first extreme counted from the window's oldest element.

    As ``rolling.apply(np.argmax)`` does, a NaN in the window wins (numpy's argmax returns the first NaN). Days
    before ``start`` (each instrument's first bar) are outside qlib's series, so they shorten the window instead
    of counting as NaN.
    """
    if _kernels is not None:
        out = np.empty(np.shape(x))
        _kernels.roll_argext(_float(x), w, np.asarray(start, dtype=np.int64), largest, out)
        return out
    x = _finite(x)
    absent = -np.inf if largest else np.inf
    d = x.shape[1]
    before = np.arange(d)[None, :] < np.asarray(start)[:, None]
    x = np.where(before, absent, x)
    arg = np.argmax if largest else np.argmin
    pos = np.empty(x.shape)
    for rows, win in _window_chunks(x, w, absent):
        pos[rows] = arg(win, axis=-1)
    # Absent leading elements of the window shift the 1-based position counted from the real oldest element.
    first = np.arange(d)[None, :] - w + 1
    n_absent = np.clip(np.asarray(start)[:, None] - first, 0, w)
    out = pos - n_absent + 1
    # rolling.apply with min_periods=1 skips windows without a single non-NaN value.
    out[rolling_count(x, w) == 0] = np.nan  # absent days are ±inf, not counted
    return out
