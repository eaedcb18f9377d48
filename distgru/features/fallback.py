"""numpy versions of the compiled operators in :mod:`distgru.features.kernels`, used when numba is missing.

Each computes the same float operations in the same order as its kernel (bit-identical results), all instruments
at once; :mod:`distgru.features.ops` documents the semantics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Elements of the [rows, D, w] window buffer of the order-statistic operators (16 MB of float32).
_CHUNK_ELEMENTS = 1 << 22


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
    """Running sums from sequential accumulations (:func:`_running`), position sums as exact integers."""
    rows = max(1, _CHUNK_ELEMENTS // (4 * max(1, x.shape[1])))
    if x.shape[0] > rows:
        # A block of instruments at a time: the ~20 temporaries stay in cache and under glibc's mmap threshold.
        parts = [rolling_regression(x[lo:lo + rows], w, which, None if std is None else std[lo:lo + rows])
                 for lo in range(0, x.shape[0], rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    x = np.asarray(x, dtype=np.float64)  # qlib feeds inf through; NaN is skipped
    valid = ~np.isnan(x)
    v = np.where(valid, x, 0.0)
    f = ops.ref(v, w)
    f[:, :w] = 0.0
    y = _running(f, v)
    y2 = _running(f * f, v * v)
    y_prev = ops.ref(y, 1)
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
            std = ops.rolling_std(x, w) if std is None else std
            out["rsquare"] = np.where(ops._near_zero(std), np.nan, r * r)
        if "resi" in which:
            interp = y / n - slope * (x_sum / n)
            out["resi"] = x - (slope * w + interp)
    return out


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
    x = ops._finite(x)
    n = ops.rolling_count(x, w)
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
    x = ops._finite(x)
    n = ops.rolling_count(x, w)
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
    x = ops._finite(x)
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
    out[ops.rolling_count(x, w) == 0] = np.nan  # absent days are ±inf, not counted
    return out


from distgru.features import ops  # noqa: E402 - after the definitions: ops imports this module at its end
