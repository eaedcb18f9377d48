"""On-disk cache of raw features and processed panels: Arrow IPC (Feather v2) files plus JSON manifests.

Layout under ``cache_dir``::

    features/<key>.arrow   one row per (instrument, day), instrument-major: the F feature values as one
                           fixed-size list (so the [N, D, F] array is one contiguous buffer), the label, the
                           membership flag
    features/<key>.json    calendar, instruments, names, and the inputs the key was made from
    panels/<key>.arrow     processed features, raw and learn labels, same layout
    panels/<key>.json      calendar, instruments, names, the fitted ProcessorState

A feature key hashes the data fingerprint, the feature set and columns, the label, the query start and the feature
code version; a panel key hashes a feature key with everything processing reads (specs, fit window, day
range). The manifest is written after the data file, both by rename, so a reader never sees half an entry: a
manifest present means its data is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from distgru.features.table import FeatureTable
from distgru.processing.processors import ProcessorState

log = logging.getLogger(__name__)

_VALUES = "__values__"
_MEMBERSHIP = "__membership__"
_LABEL_RAW = "__label_raw__"
_LABEL_LEARN = "__label_learn__"


def make_key(parts: dict[str, Any]) -> str:
    """A short stable hash of JSON-able key parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_entry(stem: Path, columns: dict[str, pa.Array | np.ndarray], manifest: dict[str, Any]) -> None:
    table = pa.table({name: pa.array(values) if isinstance(values, np.ndarray) else values
                      for name, values in columns.items()})
    # One record batch, so a memory-mapped read hands out each column without a copy.
    _atomic(stem.with_suffix(".arrow"), lambda p: feather.write_feather(
        table, str(p), compression="uncompressed", chunksize=max(1, table.num_rows)))
    _atomic(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(manifest)))


def _read_entry(stem: Path) -> tuple[pa.Table, dict[str, Any]] | None:
    manifest_path = stem.with_suffix(".json")
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        table = feather.read_table(str(stem.with_suffix(".arrow")), memory_map=True)
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("cache entry %s unreadable (%s); recomputing", stem, e)
        return None
    return table, manifest


def _column(table: pa.Table, name: str, shape: tuple[int, int]) -> np.ndarray:
    return table.column(name).to_numpy().reshape(shape)


def _dense(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    # Flattening one fixed-size-list chunk is zero-copy; the copy detaches the result from the memory map.
    return table.column(name).chunk(0).flatten().to_numpy().reshape(shape).copy()


def _rows(values: np.ndarray) -> pa.Array:
    """[N, D, F] → one fixed-size list of F values per (instrument, day) row, sharing the array's memory."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[-1])


def _axes(manifest: dict[str, Any]) -> tuple[pd.DatetimeIndex, tuple[str, ...], tuple[int, int]]:
    calendar = pd.DatetimeIndex(np.array(manifest["calendar"], dtype=f"datetime64[{manifest['calendar_unit']}]"))
    instruments = tuple(manifest["instruments"])
    return calendar, instruments, (len(instruments), len(calendar))


def _axes_manifest(calendar: pd.DatetimeIndex, instruments: tuple[str, ...]) -> dict[str, Any]:
    # Integers in the calendar's own unit, so a read-back index equals the original, dtype included.
    return {"calendar": calendar.asi8.tolist(), "calendar_unit": calendar.unit, "instruments": list(instruments)}


def _lookup(cache_dir: Path, kind: str, key: str) -> tuple[pa.Table, dict[str, Any]] | None:
    entry = _read_entry(cache_dir / kind / key)
    log.info("%s cache %s %s", kind.rstrip("s"), "hit" if entry else "miss", key)
    return entry


def load_features(cache_dir: Path, key: str) -> FeatureTable | None:
    """The cached raw features for ``key``, or None (a miss)."""
    entry = _lookup(cache_dir, "features", key)
    if entry is None:
        return None
    table, manifest = entry
    calendar, instruments, shape = _axes(manifest)
    return FeatureTable(
        calendar=calendar, instruments=instruments, names=tuple(manifest["names"]),
        values=_dense(table, _VALUES, (*shape, len(manifest["names"]))),
        label=_column(table, manifest["label_name"], shape).copy(),
        membership=_column(table, _MEMBERSHIP, shape).copy(),
        label_name=manifest["label_name"],
    )


def save_features(cache_dir: Path, key: str, table: FeatureTable, inputs: dict[str, Any]) -> None:
    columns: dict[str, pa.Array | np.ndarray] = {_VALUES: _rows(table.values)}
    columns[table.label_name] = table.label.reshape(-1)
    columns[_MEMBERSHIP] = table.membership.reshape(-1)
    manifest = {**_axes_manifest(table.calendar, table.instruments), "names": list(table.names),
                "label_name": table.label_name, "inputs": inputs}
    _write_entry(cache_dir / "features" / key, columns, manifest)
    log.info("feature cache stored %s", key)


def load_panel(cache_dir: Path, key: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, ProcessorState] | None:
    """Cached (features, label_raw, label_learn, state) for ``key``, or None."""
    entry = _lookup(cache_dir, "panels", key)
    if entry is None:
        return None
    table, manifest = entry
    _, _, shape = _axes(manifest)
    state = ProcessorState.from_dict(manifest["state"])
    return (_dense(table, _VALUES, (*shape, len(state.feature_names))), _column(table, _LABEL_RAW, shape).copy(),
            _column(table, _LABEL_LEARN, shape).copy(), state)


def save_panel(cache_dir: Path, key: str, calendar: pd.DatetimeIndex, instruments: tuple[str, ...],
               features: np.ndarray, label_raw: np.ndarray, label_learn: np.ndarray, state: ProcessorState,
               inputs: dict[str, Any]) -> None:
    columns: dict[str, pa.Array | np.ndarray] = {_VALUES: _rows(features)}
    columns[_LABEL_RAW] = label_raw.reshape(-1)
    columns[_LABEL_LEARN] = label_learn.reshape(-1)
    manifest = {**_axes_manifest(calendar, instruments), "state": state.to_dict(), "inputs": inputs}
    _write_entry(cache_dir / "panels" / key, columns, manifest)
    log.info("panel cache stored %s", key)
