"""What processing produces and training consumes: the processed panel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
