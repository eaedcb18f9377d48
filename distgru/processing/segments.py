"""Segments (train/valid/test date ranges) as ``[lo, hi)`` day indices on a panel calendar, with embargo."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from distgru.config import ConfigError, DatasetConfig, ProcessorsConfig

SEGMENTS = ("train", "valid", "test")
_CALL = re.compile(r"([A-Za-z_]\w*)\s*\(")


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call's inside."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i])
            start = i + 1
    args.append(text[start:])
    return args


def _future_reach(expr: str) -> int:
    """How many days past the row's date an expression reads: ``Ref(x, -n)`` adds n, ``Ref(x, n)`` takes n."""
    reach, pos = 0, 0
    while (m := _CALL.search(expr, pos)) is not None:
        depth, end = 1, m.end()
        while depth and end < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        if depth:
            raise ConfigError(f"features.label: unbalanced parentheses in {expr!r}")
        args = _split_args(expr[m.end():end - 1])
        if m.group(1) == "Ref" and len(args) == 2:
            try:
                shift = int(float(args[1]))
            except ValueError:
                raise ConfigError(f"features.label: Ref shift {args[1].strip()!r} is not a number") from None
            inner = _future_reach(args[0]) - shift
        else:
            # Rolling operators look back, element-wise ones look at the same day: the arguments' reach holds.
            inner = max(_future_reach(a) for a in args)
        reach = max(reach, inner)
        pos = end
    return reach


def label_horizon(expr: str) -> int:
    """Trading days after the row's date that the label reads (2 for ``Ref($close, -2) / Ref($close, -1) - 1``)."""
    return max(0, _future_reach(expr))


def _date_range(calendar: pd.DatetimeIndex) -> str:
    return f"{calendar[0]:%Y-%m-%d} .. {calendar[-1]:%Y-%m-%d}" if len(calendar) else "no days"


def day_slice(calendar: pd.DatetimeIndex, start: str | None, end: str | None) -> tuple[int, int]:
    """Inclusive dates → ``[lo, hi)`` indices (None: open end)."""
    lo = 0 if start is None else int(calendar.searchsorted(pd.Timestamp(start), "left"))
    hi = len(calendar) if end is None else int(calendar.searchsorted(pd.Timestamp(end), "right"))
    return lo, max(lo, hi)


def segment_bounds(calendar: pd.DatetimeIndex, dataset: DatasetConfig, horizon: int,
                   samples: np.ndarray | None = None) -> dict[str, tuple[int, int]]:
    """Each segment's ``[lo, hi)`` on ``calendar``; with ``dataset.embargo`` the last ``horizon`` days of train and
    valid are dropped, so no training or early-stopping label reads prices from the next segment.

    ``samples`` (bool [N, D]: member rows with a label) makes a segment without any an error, as is one without a
    trading day.
    """
    bounds: dict[str, tuple[int, int]] = {}
    for name in SEGMENTS:
        start, end = getattr(dataset, name)
        lo, hi = day_slice(calendar, start, end)
        embargoed = dataset.embargo and name != "test" and horizon > 0
        if embargoed:
            hi = max(lo, hi - horizon)
        where = (f"dataset.{name} [{start} .. {end}]"
                 + (f" (after the {horizon}-day embargo)" if embargoed else ""))
        if lo == hi:
            raise ConfigError(f"{where} holds no trading day; the data covers {_date_range(calendar)}")
        if samples is not None and not samples[:, lo:hi].any():
            raise ConfigError(f"{where} has no member rows with a label (days {calendar[lo]:%Y-%m-%d} .. "
                              f"{calendar[hi - 1]:%Y-%m-%d}); the data covers {_date_range(calendar)}")
        bounds[name] = (lo, hi)
    return bounds


def fit_window(calendar: pd.DatetimeIndex, processors: ProcessorsConfig,
               train: tuple[int, int]) -> tuple[int, int]:
    """``[lo, hi)`` of the processors' fit window: the configured dates, each missing end taken from the
    (embargoed) train segment."""
    lo, hi = day_slice(calendar, processors.fit_start, processors.fit_end)
    lo = train[0] if processors.fit_start is None else lo
    hi = train[1] if processors.fit_end is None else max(lo, hi)
    if lo == hi:
        raise ConfigError(f"processors.fit_start/fit_end [{processors.fit_start} .. {processors.fit_end}] holds "
                          f"no trading day; the data covers {_date_range(calendar)}")
    return lo, hi
