"""Feature tables: dense ``[instrument, day, feature]`` arrays plus the label, before and after processing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureTable:
    """Raw features and label on the panel's full calendar (computed on each instrument's whole history).

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

    def to_frame(self, start: str | None = None, end: str | None = None, masked: bool = True) -> pd.DataFrame:
        """Long frame indexed (datetime, instrument), sorted, one float32 column per feature plus the label.

        ``masked`` keeps only member rows (qlib's market universe); otherwise every row with a bar is kept.
        """
        lo = 0 if start is None else int(self.calendar.searchsorted(pd.Timestamp(start), "left"))
        hi = len(self.calendar) if end is None else int(self.calendar.searchsorted(pd.Timestamp(end), "right"))
        keep = self.membership[:, lo:hi] if masked else np.ones((len(self.instruments), hi - lo), dtype=bool)
        # Day-major order (datetime, instrument) as qlib's frames are sorted.
        day_idx, inst_idx = np.nonzero(keep.T)
        day_idx = day_idx + lo
        data = self.values[inst_idx, day_idx, :]
        frame = pd.DataFrame(data, columns=list(self.names), copy=False)
        frame[self.label_name] = self.label[inst_idx, day_idx]
        frame.index = pd.MultiIndex.from_arrays(
            [self.calendar[day_idx], np.asarray(self.instruments, dtype=object)[inst_idx]],
            names=["datetime", "instrument"],
        )
        return frame


@dataclass(frozen=True)
class ProcessedPanel:
    """What training consumes: processed features, both labels, membership and segment bounds.

    Follows qlib's data keys: ``features`` are the infer-processed features (DK_I, what the model scores),
    ``label_learn`` is the learn-processed training target (DK_L: CSRankNorm-ed, NaN where DropnaLabel drops),
    ``label_raw`` is the raw label that IC and backtests use (DK_R).
    """

    calendar: pd.DatetimeIndex
    instruments: tuple[str, ...]
    feature_names: tuple[str, ...]
    features: np.ndarray
    """float32 [N, D, F] after the infer processors (NaN-free after Fillna)."""
    label_raw: np.ndarray
    """float32 [N, D]."""
    label_learn: np.ndarray
    """float32 [N, D]; NaN marks rows DropnaLabel removed (they are gaps inside training windows)."""
    membership: np.ndarray
    """bool [N, D]: rows present in the handler's data (universe members)."""
    segments: dict[str, tuple[int, int]]
    """Segment name → [first_day, last_day + 1) indices into ``calendar``."""
    weight: np.ndarray | None = None
    """Optional float32 [N, D] per-sample weight column from the data."""
