"""Rolling and element-wise operators over ``[instrument, day]`` arrays with qlib's exact semantics.

Every function takes arrays with time on the last axis and treats all instruments at once. Rolling operators
follow qlib/pandas ``rolling(w, min_periods=1)``: partial windows at the start, NaN skipped inside windows
(IdxMax/IdxMin excepted), results float64 as pandas returns them, and ``±inf`` read as NaN (pandas turns inf into
NaN before its rolling kernels).

How each family is computed, all instruments in one call (no per-instrument Python loop):

- Mean, Sum, Std: compiled replicas of pandas' own rolling kernels (:mod:`distgru.features.moments`), the code
  qlib runs per instrument, bit for bit.
- Corr: likewise, a compiled replica of pandas' ``roll_corr``.
- Max, Min: van Herk / Gil-Werman blocks of ``w`` days (a window is one block's suffix plus the next block's
  prefix), O(D) whatever the window.
- Slope, Rsquare, Resi: qlib's running sums replayed in its update order, positions relative to the window's
  last day (exact integers), the closed-form OLS of qlib's Cython kernels.
- Slope/Rsquare/Resi, Quantile, Rank, IdxMax, IdxMin: numba kernels (:mod:`distgru.features.kernels`), one row at
  a time.

numba is a hard dependency: the compiled kernels are the only implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from distgru.features import kernels, moments

# qlib masks Corr and Rsquare where the rolling std is "close to zero" with np.isclose(std, 0, atol=2e-5).
STD_ATOL = 2e-5


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


# ---------------------------------------------------------------- compiled moments


def _as_float(x: np.ndarray) -> np.ndarray:
    """float32 or float64 as it is (the compiled kernels read either), anything else as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _compiled(kernel: Callable[[np.ndarray, int, np.ndarray], None], x: np.ndarray, w: int) -> np.ndarray:
    out = np.empty(np.shape(x))
    kernel(_as_float(x), w, out)
    return out


def rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    """pandas' rolling sum (Kahan-summed, exact on runs of one repeated value), as qlib computes it."""
    return _compiled(moments.roll_sum, x, w)


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """pandas' rolling mean (Kahan-summed, exact on runs of one repeated value), as qlib computes it."""
    return _compiled(moments.roll_mean, x, w)


def rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Sample standard deviation (ddof=1), NaN for a one-value window: pandas' own online (Welford) kernel.

    On a constant window (a suspension's flat price or zero volume) that kernel returns rounding drift left by
    values that have left the window, not 0, and the drift depends on where the series starts. qlib's values carry
    the same drift, amplified by ``/($volume+1e-12)`` in VSTD and WVMA, so it is kept bit for bit: callers start
    the series where qlib's query would (see :func:`distgru.features.expr.extended_window`).
    """
    return _compiled(moments.roll_std, x, w)


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


# ---------------------------------------------------------------- correlation and regression


def _near_zero(std: np.ndarray) -> np.ndarray:
    # np.isclose(std, 0, atol=STD_ATOL) for real std (NaN is never close), without isclose's extra passes.
    with np.errstate(invalid="ignore"):
        return np.abs(std) <= STD_ATOL


def rolling_corr(a: np.ndarray, b: np.ndarray, w: int, std_a: np.ndarray | None = None,
                 std_b: np.ndarray | None = None) -> np.ndarray:
    """pandas' rolling Pearson correlation (pairwise-valid elements); NaN where either input's rolling std ≈ 0.

    ``std_a``/``std_b``: the inputs' ``rolling_std`` when the caller has them already. A day where either input
    is NaN is skipped, as pandas pairs two frames. The compiled replica of pandas' ``roll_corr``
    (:mod:`distgru.features.moments`) gives pandas' values to 1 ulp.
    """
    corr = np.empty(np.shape(a))
    moments.roll_corr(_as_float(a), _as_float(b), w, corr)
    std_a = rolling_std(a, w) if std_a is None else std_a
    std_b = rolling_std(b, w) if std_b is None else std_b
    corr[_near_zero(std_a) | _near_zero(std_b)] = np.nan
    return corr


def rolling_regression(x: np.ndarray, w: int, which: Sequence[str], std: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
    """qlib's Slope, Rsquare and Resi (its Cython ``rolling_slope``/``rsquare``/``resi``), NaNs skipped.

    ``which`` picks among ``slope``, ``rsquare`` (NaN where the rolling std of x ≈ 0; ``std`` is x's
    ``rolling_std`` if the caller has it) and ``resi``; they share one set of window sums. The sums are qlib's
    running sums with its update order and rounding: the value sums (Σy, Σy², Σ(position·y)) updated day by day
    as qlib's Cython ``update()`` does, the position sums as exact integers. So even degenerate windows (a
    suspension's flat price, where the result is rounding noise such as R² = 0) agree with qlib, provided the
    series starts where qlib's does.
    """
    x = np.asarray(x, dtype=np.float64)
    slot = np.array([which.index(k) if k in which else -1 for k in ("slope", "rsquare", "resi")])
    res = np.empty((len(which), *x.shape))
    kernels.roll_regression(x, w, slot, res)
    out = dict(zip(which, res, strict=True))
    if "rsquare" in out:
        std = rolling_std(x, w) if std is None else std
        out["rsquare"][_near_zero(std)] = np.nan
    return out


# ---------------------------------------------------------------- order statistics


def _levels(qs: Sequence[float]) -> np.ndarray:
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"Quantile: level must be in [0, 1], got {q}")
    return np.asarray(qs, dtype=np.float64)


def rolling_quantiles(x: np.ndarray, w: int, qs: Sequence[float]) -> list[np.ndarray]:
    """pandas' rolling quantile with linear interpolation, for several levels from one sort of each window."""
    levels = _levels(qs)
    out = np.empty((len(qs), *np.shape(x)))
    kernels.roll_order_stats(_float(x), w, levels, out, False, out[:0, 0])
    return list(out)


def rolling_order_stats(x: np.ndarray, w: int, qs: Sequence[float], rank: bool
                        ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Quantiles at levels ``qs`` and (``rank``) the percentile rank of one input and window: one sorted window
    serves all of them (Alpha158's QTLU/QTLD/RANK share ``$close`` and the window)."""
    if not rank:
        return (rolling_quantiles(x, w, qs) if qs else []), None
    levels = _levels(qs)
    out = np.empty((len(qs), *np.shape(x)))
    ranks = np.empty(np.shape(x))
    kernels.roll_order_stats(_float(x), w, levels, out, True, ranks)
    return list(out), ranks


def rolling_rank(x: np.ndarray, w: int) -> np.ndarray:
    """Percentile rank of each day's value within its window (average ties), as pandas rank(pct=True)."""
    out = np.empty(np.shape(x))
    kernels.roll_rank(_float(x), w, out)
    return out


def rolling_argext(x: np.ndarray, w: int, start: np.ndarray, largest: bool) -> np.ndarray:
    """qlib's IdxMax/IdxMin: 1-based position of the first extreme counted from the window's oldest element.

    As ``rolling.apply(np.argmax)`` does, a NaN in the window wins (numpy's argmax returns the first NaN). Days
    before ``start`` (each instrument's first bar) are outside qlib's series, so they shorten the window instead
    of counting as NaN.
    """
    out = np.empty(np.shape(x))
    kernels.roll_argext(_float(x), w, np.asarray(start, dtype=np.int64), largest, out)
    return out
