"""Pre-flight checks of a processed panel against the config that made it: settings that train without any error
yet waste the run or make its numbers meaningless.

``check_panel`` raises :class:`ConfigError` for what cannot work (a window longer than the train segment) and
returns, and logs, one-line warnings for what is legal but most likely a mistake: segments reaching past the data,
a backtest portfolio as large as the universe, features that carry no information.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from distgru.config import Config, ConfigError
from distgru.data.validate import listing
from distgru.processing.panel import ProcessedPanel
from distgru.processing.segments import SEGMENTS

log = logging.getLogger(__name__)

OUTSIDE_SLACK_DAYS = 14
"""Calendar days a segment may start before, or end after, the data without a warning: configs name round dates
(qlib's 2008-01-01 on data starting 2008-01-02) and exchanges close for up to ~10 days (Spring Festival)."""


def check_panel(cfg: Config, panel: ProcessedPanel) -> list[str]:
    """Check ``panel`` (what ``prepare_panel(cfg)`` returned) against ``cfg``; errors raise ConfigError, warnings
    are returned, one line each (``log_warnings`` prints them once per command)."""
    return [*_step_len(cfg, panel), *_outside_data(cfg, panel), *_portfolio(cfg, panel), *_flat_features(panel)]


def log_warnings(warnings: list[str]) -> None:
    for message in dict.fromkeys(warnings):  # once each, in order
        log.warning("%s", message)


def _step_len(cfg: Config, panel: ProcessedPanel) -> list[str]:
    if cfg.model.input != "window":  # flat models read one day: step_len is not used
        return []
    step = cfg.dataset.step_len
    days = {name: hi - lo for name, (lo, hi) in panel.segments.items()}
    shown = ", ".join(f"{name} {n}" for name, n in days.items())
    train = days.get("train")
    if train is not None and step > train:
        raise ConfigError(f"dataset.step_len: {step} trading days is longer than the whole train segment (segments: "
                          f"{shown} trading days); set dataset.step_len to at most {train} (qlib uses 20) or "
                          "lengthen dataset.train")
    short = [name for name, n in days.items() if name != "train" and step > n]
    if not short:
        return []
    # Legal, as in qlib: such windows reach back into the previous segment's days.
    return [f"dataset.step_len: {step} trading days is longer than the {' and '.join(short)} segment(s) (segments: "
            f"{shown} trading days), so most of each of their windows lies before the segment; shorten "
            "dataset.step_len or lengthen those segments"]


def _outside_data(cfg: Config, panel: ProcessedPanel) -> list[str]:
    """Segments (and the processors' fit window) that start or end well outside the loaded days: they are cut to
    the data without a word, so a run "on 2008-2020" may have learned from two years."""
    first, last = panel.calendar[0], panel.calendar[-1]
    slack = pd.Timedelta(days=OUTSIDE_SLACK_DAYS)
    ranges: dict[str, tuple[str | None, str | None]] = {
        f"dataset.{name}": getattr(cfg.dataset, name) for name in SEGMENTS if name in panel.segments}
    if cfg.processors.fit_start is not None or cfg.processors.fit_end is not None:
        ranges["processors.fit_start/fit_end"] = (cfg.processors.fit_start, cfg.processors.fit_end)
    out = []
    for key, (start, end) in ranges.items():
        beyond = []
        if start is not None and pd.Timestamp(start) < first - slack:
            beyond.append(f"starts {start}")
        if end is not None and pd.Timestamp(end) > last + slack:
            beyond.append(f"ends {end}")
        if beyond:
            out.append(f"{key}: [{start} .. {end}] {' and '.join(beyond)}, outside the data, which covers "
                       f"{first:%Y-%m-%d} .. {last:%Y-%m-%d}; it is cut to those days. Move its dates inside them, "
                       "or load more history (data.start/data.end, the data source)")
    return out


def _portfolio(cfg: Config, panel: ProcessedPanel) -> list[str]:
    """TopK-Dropout against the number of members on the test days, the stocks it can hold."""
    lo, hi = panel.segments.get("test", (0, len(panel.calendar)))
    members = panel.membership[:, lo:hi].sum(axis=0)
    if members.size == 0 or not members.any():
        return []  # an empty test segment is segment_bounds' error
    most, typical = int(members.max()), int(np.median(members))
    topk, n_drop = cfg.backtest.topk, cfg.backtest.n_drop
    if topk >= most:
        return [f"backtest.topk: {topk} is not below the universe size ({most} instruments on the fullest test day, "
                f"{typical} on a typical one); the portfolio holds every stock, so the backtest measures the "
                f"universe, not the model. Set backtest.topk well below {typical} (qlib: 50 of CSI300's 300)"]
    if topk + n_drop > typical:
        return [f"backtest.topk + backtest.n_drop: {topk} + {n_drop} exceeds the {typical} instruments of a typical "
                f"test day; TopK-Dropout then cannot always find {n_drop} replacements outside its holdings. Lower "
                "backtest.topk or backtest.n_drop"]
    return []


def flat_features(panel: ProcessedPanel) -> list[str]:
    """Names of the features with a single value (or only NaN) on every member row of the segments.

    The panel is processed, so an all-NaN raw column has become Fillna's constant by now; a column that is
    constant after processing was NaN throughout, NaN over the whole fit window, or constant in the raw data.
    """
    if not panel.segments:
        return []
    lo = min(lo for lo, _ in panel.segments.values())
    hi = max(hi for _, hi in panel.segments.values())
    rows = panel.features[:, lo:hi][panel.membership[:, lo:hi]]
    if not len(rows):
        return []
    # fmax/fmin skip NaN (and give NaN for an all-NaN column, which compares False): no RuntimeWarning.
    varies = np.fmax.reduce(rows, axis=0) > np.fmin.reduce(rows, axis=0)
    return [name for name, v in zip(panel.feature_names, varies, strict=True) if not v]


def _flat_features(panel: ProcessedPanel) -> list[str]:
    flat = flat_features(panel)
    if not flat:
        return []
    return [f"features: {len(flat)} of {len(panel.feature_names)} feature column(s) hold one value on every member "
            f"row ({listing(flat)}): their raw values are NaN throughout (e.g. VWAP0 without a vwap field, volume "
            "features when volume is all zero), NaN over the whole fit window, or constant, and the model learns "
            "nothing from them. Fix the data, or leave them out of features.columns"]
