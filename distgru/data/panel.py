"""The in-memory daily-bar panel every data source produces.

Layout is instrument-major, ``[instrument, day]``, because every feature operator rolls along time within one
instrument: a contiguous last axis keeps those rolls cache-friendly and lets one numpy call cover all instruments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PRICE_FIELDS = ("open", "high", "low", "close")
REQUIRED_FIELDS = (*PRICE_FIELDS, "volume")
OPTIONAL_FIELDS = ("factor", "vwap", "change", "weight")


class DataError(ValueError):
    """Bad input data; the message names the file, row or key and says what to do."""


@dataclass(frozen=True)
class BarPanel:
    """Daily bars of a universe on one trading calendar.

    Every array in ``fields`` is float32 ``[len(instruments), len(calendar)]`` with NaN where the instrument has no
    bar that day (before listing, after delisting, or a day missing inside its history: qlib's bin files hold NaN
    there too, and the feature operators see those NaNs inside their windows).
    """

    calendar: pd.DatetimeIndex
    """Trading days, sorted and unique (the union of days with any bar, or the provider's calendar file)."""
    instruments: tuple[str, ...]
    """Upper-case symbols (``SH600000``), one per row of every array."""
    fields: dict[str, np.ndarray]
    """Field name (``open high low close volume`` and optional ``factor vwap change weight``) → [N, D] float32."""
    membership: np.ndarray
    """bool [N, D]: the instrument is in the universe (e.g. csi300) that day. Features are computed on the full
    history and only member rows become samples."""
    benchmark: dict[str, np.ndarray] | None = None
    """The benchmark index's fields (at least ``close``) → [D] float32, or None."""
    benchmark_name: str | None = None
    """Symbol of the benchmark index, e.g. ``SH000300``."""
    source: str = ""
    """Where the bars came from (directory, file or ``synthetic(...)``), for messages and provenance."""
    extras: dict[str, object] = field(default_factory=dict)
    """Source-specific metadata (the synthetic market keeps its planted expected returns here)."""

    def __post_init__(self) -> None:
        n, d = len(self.instruments), len(self.calendar)
        missing = [f for f in REQUIRED_FIELDS if f not in self.fields]
        if missing:
            raise DataError(f"{self.source or 'panel'}: missing required fields {missing}; have {sorted(self.fields)}")
        for name, arr in self.fields.items():
            if arr.shape != (n, d):
                raise DataError(f"field {name!r} has shape {arr.shape}, expected (instruments, days) = {(n, d)}")
        if self.membership.shape != (n, d) or self.membership.dtype != np.bool_:
            raise DataError(f"membership must be bool {(n, d)}, got {self.membership.dtype} {self.membership.shape}")
        if not self.calendar.is_monotonic_increasing or not self.calendar.is_unique:
            raise DataError(f"{self.source or 'panel'}: calendar must be sorted and unique")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.instruments), len(self.calendar)

    def field(self, name: str) -> np.ndarray:
        """One field's [N, D] array; a clear error when the source lacks it."""
        try:
            return self.fields[name]
        except KeyError:
            where = self.source or "panel"
            raise DataError(f"{where} has no field {name!r}; available: {sorted(self.fields)}") from None

    def fingerprint(self) -> str:
        """Content hash of calendar, instruments, fields, membership and benchmark (cache key component)."""
        h = hashlib.sha256()
        h.update(np.asarray(self.calendar.asi8).tobytes())
        h.update("\n".join(self.instruments).encode())
        for name in sorted(self.fields):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.fields[name]).tobytes())
        h.update(np.packbits(self.membership).tobytes())
        for name in sorted(self.benchmark or {}):
            h.update(b"bench:" + name.encode())
            h.update(np.ascontiguousarray(self.benchmark[name]).tobytes())  # type: ignore[index]
        return h.hexdigest()[:20]

    def select(self, instruments: list[str] | None = None, start: str | None = None, end: str | None = None
               ) -> BarPanel:
        """A sub-panel by instrument list and/or calendar range (inclusive)."""
        rows = np.arange(len(self.instruments))
        if instruments is not None:
            index = {s: i for i, s in enumerate(self.instruments)}
            unknown = [s for s in instruments if s not in index]
            if unknown:
                raise DataError(f"instruments not in {self.source or 'panel'}: {unknown}")
            rows = np.array([index[s] for s in instruments], dtype=np.int64)
        lo = 0 if start is None else int(self.calendar.searchsorted(pd.Timestamp(start), "left"))
        hi = len(self.calendar) if end is None else int(self.calendar.searchsorted(pd.Timestamp(end), "right"))
        cols = slice(lo, hi)
        return BarPanel(
            calendar=self.calendar[cols],
            instruments=tuple(self.instruments[i] for i in rows),
            fields={k: v[rows, cols] for k, v in self.fields.items()},
            membership=self.membership[rows, cols],
            benchmark=None if self.benchmark is None else {k: v[cols] for k, v in self.benchmark.items()},
            benchmark_name=self.benchmark_name,
            source=self.source,
            extras=self.extras,
        )
