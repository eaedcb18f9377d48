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

Each manifest carries SHA-256 checksums of its data file and of its own other keys, verified on every read: a
flipped byte that leaves the file readable (a disk or copy fault) would otherwise be a silent "cache hit" on wrong
values. A mismatch is a logged warning naming the file, and the entry counts as a miss (recomputed, rewritten).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
_CHECKSUM = "checksum"
_HASH_CHUNK = 32 << 20
_ALGORITHM = "sha256 of 32 MiB chunk sha256s"
"""Named in each manifest: an entry summed another way is recomputed, not reported as corrupt."""


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


def _file_digest(path: Path) -> str:
    """SHA-256 of the SHA-256s of the file's 32 MiB chunks, hashed on parallel threads over a memory map.

    SHA-256 runs at ~1 GB/s a core here (SHA-NI; measured faster than blake2b: 0.29 s against 0.66 s for
    256 MB), and hashlib releases the GIL, so on a many-core training host the chunks cost a fraction of that.
    An empty file cannot be mapped: ValueError (the caller's "unreadable").
    """
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        chunks = [memoryview(view)[i:i + _HASH_CHUNK] for i in range(0, len(view), _HASH_CHUNK)]
        try:
            with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1, 8)) as pool:
                parts = list(pool.map(lambda chunk: hashlib.sha256(chunk).digest(), chunks))
        finally:
            for chunk in chunks:  # the map refuses to close while a view of it is alive
                chunk.release()
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != _CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_entry(stem: Path, columns: dict[str, pa.Array | np.ndarray], manifest: dict[str, Any]) -> None:
    table = pa.table({name: pa.array(values) if isinstance(values, np.ndarray) else values
                      for name, values in columns.items()})
    digest: dict[str, str] = {}

    def write_data(path: Path) -> None:
        # One record batch, so a memory-mapped read hands out each column without a copy.
        feather.write_feather(table, str(path), compression="uncompressed", chunksize=max(1, table.num_rows))
        # Hashed before the rename, so the sum is of the bytes this writer produced.
        digest["data"] = _file_digest(path)

    _atomic(stem.with_suffix(".arrow"), write_data)
    sums = {"algorithm": _ALGORITHM, "data": digest["data"], "manifest": _manifest_digest(manifest)}
    _atomic(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps({**manifest, _CHECKSUM: sums})))


def _checksum_problem(stem: Path, manifest: dict[str, Any]) -> tuple[str, bool] | None:
    """(why the entry cannot be trusted, whether that is corruption) or None when both sums match."""
    sums = manifest.get(_CHECKSUM)
    if not isinstance(sums, dict) or sums.get("algorithm") != _ALGORITHM:
        return f"{stem.with_suffix('.json')}: no checksum of this kind (written by an older distgru)", False
    if sums.get("manifest") != _manifest_digest(manifest):
        return f"{stem.with_suffix('.json')}: manifest checksum mismatch", True
    data = stem.with_suffix(".arrow")
    if sums.get("data") != _file_digest(data):
        return f"{data}: content checksum mismatch (changed or corrupted since it was written)", True
    return None


def _read_entry(stem: Path) -> tuple[pa.Table, dict[str, Any]] | None:
    manifest_path = stem.with_suffix(".json")
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        problem = _checksum_problem(stem, manifest)
        if problem is not None:
            why, corrupt = problem
            # Corruption is worth a warning; an entry from before checksums existed is routine.
            (log.warning if corrupt else log.info)("cache entry %s; ignoring it and recomputing", why)
            return None
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
