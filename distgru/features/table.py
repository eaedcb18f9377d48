"""The raw feature table: dense ``[instrument, day, feature]`` arrays plus the label, before processing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def frame_rows(keep: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray]:
    """(day, instrument) indices of the True cells of ``keep`` [N, D], sorted by ``order``: ``datetime``
    (day-major, as qlib's data handlers hold features) or ``instrument`` (as qlib's ``D.features`` returns them)."""
    if order == "datetime":
        return np.nonzero(keep.T)
    if order == "instrument":
        inst_idx, day_idx = np.nonzero(keep)
        return day_idx, inst_idx
    raise ValueError(f"order must be 'datetime' or 'instrument', got {order!r}")


def frame_index(calendar: pd.DatetimeIndex, instruments: tuple[str, ...], day_idx: np.ndarray,
                inst_idx: np.ndarray, order: str) -> pd.MultiIndex:
    """The (datetime, instrument) or (instrument, datetime) index of those rows."""
    # Levels plus codes: no factorising of a million timestamps and symbols, which from_arrays would do.
    days, symbols = calendar, pd.Index(instruments)
    if order == "datetime":
        return pd.MultiIndex(levels=[days, symbols], codes=[day_idx, inst_idx], names=["datetime", "instrument"],
                             verify_integrity=False)
    return pd.MultiIndex(levels=[symbols, days], codes=[inst_idx, day_idx], names=["instrument", "datetime"],
                         verify_integrity=False)


@dataclass(frozen=True)
class FeatureTable:
    """Raw features and label on the days asked for (by default the panel's whole calendar, computed on each
    instrument's whole history).

    ``membership`` marks the rows that belong to the universe; only those become samples, but the others are kept
    because look-back windows may reach them (qlib computes on the full series, then masks).
    """

    calendar: pd.DatetimeIndex
    """Trading days D."""
    instruments: tuple[str, ...]
    """Symbols N."""
    names: tuple[str, ...]
    """Feature names F in the feature set's native (qlib) column order."""
    values: np.ndarray
    """float32 [N, D, F]."""
    label: np.ndarray
    """float32 [N, D]: the raw label (NaN at the end of the data, where the future close is unknown)."""
    membership: np.ndarray
    """bool [N, D]."""
    label_name: str = "LABEL0"
    """Column name of the label in frames."""

    def to_frame(self, start: str | None = None, end: str | None = None, masked: bool = True,
                 order: str = "datetime") -> pd.DataFrame:
        """Long frame of days ``start .. end``, one float32 column per feature plus the label, indexed and sorted
        by ``order`` (see :func:`frame_rows`).

        ``masked`` keeps only member rows (qlib's market universe); otherwise every row with a bar is kept.
        """
        lo = 0 if start is None else int(self.calendar.searchsorted(pd.Timestamp(start), "left"))
        hi = len(self.calendar) if end is None else int(self.calendar.searchsorted(pd.Timestamp(end), "right"))
        keep = self.membership[:, lo:hi] if masked else np.ones((len(self.instruments), hi - lo), dtype=bool)
        day_idx, inst_idx = frame_rows(keep, order)
        day_idx = day_idx + lo
        frame = pd.DataFrame(self.values[inst_idx, day_idx, :], columns=list(self.names), copy=False)
        frame[self.label_name] = self.label[inst_idx, day_idx]
        frame.index = frame_index(self.calendar, self.instruments, day_idx, inst_idx, order)
        return frame
