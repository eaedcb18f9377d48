"""One entry point from a ``DataConfig`` to a ``BarPanel``, whatever the source."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from distgru.config import ConfigError, DataConfig
from distgru.data.panel import BarPanel

FILE_SOURCES = {".parquet": "parquet", ".csv": "csv"}
"""Long-format bar files by suffix."""


def source_config(*, provider: str | None = None, data: str | None = None, synthetic: bool = False,
                  benchmark: str | None = None, benchmark_data: str | None = None,
                  base: DataConfig | None = None) -> DataConfig | None:
    """The ``DataConfig`` of a command line's bar source (``--provider``/``--data``/``--synthetic``, with
    ``--benchmark`` and ``--benchmark-data``): every command resolves its source here, so they read the same.

    With a ``base`` (a run's data config) only the source changes: universe, dates and cache stay the run's, and so
    does its benchmark unless ``benchmark`` names another. Without one: qlib and synthetic bars keep the market
    profile's benchmark (``market``), a file has none unless named. None when no source is given."""
    if benchmark_data and not benchmark:
        raise ConfigError(f"--benchmark-data {benchmark_data}: also name the index with --benchmark SYMBOL")
    if data:
        source = FILE_SOURCES.get(Path(data).suffix.lower())
        if source is None:
            raise ConfigError(f"--data {data}: expected a .parquet or .csv file (long format)")
        where: dict[str, Any] = {"source": source, "path": str(Path(data).expanduser())}
    elif provider:
        where = {"source": "qlib", "provider": str(Path(provider).expanduser())}
    elif synthetic:
        where = {"source": "synthetic"}
    elif base is not None and (benchmark or benchmark_data):
        where = {}  # the run's own bars, another benchmark
    else:
        return base
    if benchmark:
        where["benchmark"] = benchmark
    if benchmark_data or where.get("source"):
        where["benchmark_path"] = str(Path(benchmark_data).expanduser()) if benchmark_data else None
    if base is not None:
        return dataclasses.replace(base, **where)
    where.setdefault("benchmark", None if where["source"] in FILE_SOURCES.values() else "market")
    return DataConfig(**where)


def _within_bars(panel: BarPanel) -> np.ndarray:
    """bool [N, D]: days between each instrument's first and last bar (any field), as qlib's bin files span."""
    has = np.zeros(panel.shape, dtype=bool)
    for values in panel.fields.values():
        has |= ~np.isnan(values)
    seen = np.maximum.accumulate(has, axis=1)
    until = np.maximum.accumulate(has[:, ::-1], axis=1)[:, ::-1]
    return seen & until


def load_bars(cfg: DataConfig, fields: tuple[str, ...] | None = None) -> BarPanel:
    """Bars of ``cfg.source`` over the whole history to the end of the data.

    ``fields``: optional fields to read besides open/high/low/close/volume from a qlib provider (default: all it
    has; named ones it lacks are left out); a caller that only computes features passes the ones its expressions
    use, as qlib reads only those.

    ``cfg.start``/``cfg.end`` are deliberately not applied here: look-back windows need the days before the start
    and labels the days after the end (qlib extends its query both ways); the pipeline cuts to the range after
    computing features.

    Membership is narrowed to each instrument's first..last bar: qlib's series only exist over a bin's span, so a
    membership span reaching outside it has no rows there. Named instruments (``cfg.instruments``) are members
    on every day of that span.
    """
    own_benchmark = None if cfg.benchmark_path else cfg.benchmark  # from the bars' source, or another file
    # Loaders are imported on use: each pulls in its own parsing code, and a run needs only one.
    if cfg.source == "synthetic":
        from distgru.data.synthetic import generate_market

        panel = generate_market(cfg.synthetic)
        if cfg.instruments is not None:
            panel = panel.select(instruments=[s.upper() for s in cfg.instruments])
    elif cfg.source == "qlib":
        from distgru.data.qlib_provider import load_qlib_provider

        assert cfg.provider is not None  # DataConfig checks it
        panel = load_qlib_provider(cfg.provider, market=cfg.market, instruments=cfg.instruments,
                                   benchmark=own_benchmark, fields=fields, missing_fields_ok=True,
                                   zero_volume_as_missing=cfg.zero_volume_as_missing)
    else:
        from distgru.data.tabular import load_long_table

        assert cfg.path is not None
        panel = load_long_table(cfg.path, fmt=cfg.source, benchmark=own_benchmark,
                                zero_volume_as_missing=cfg.zero_volume_as_missing)
        if cfg.instruments is not None:
            panel = panel.select(instruments=[s.upper() for s in cfg.instruments])
    if cfg.benchmark_path and cfg.benchmark:
        from distgru.data.tabular import load_benchmark

        panel = dataclasses.replace(panel, benchmark=load_benchmark(cfg.benchmark_path, cfg.benchmark,
                                                                    panel.calendar),
                                    benchmark_name=cfg.benchmark.upper())
    within = _within_bars(panel)
    # Named instruments are not masked to a universe (qlib's D.features on a list applies no spans).
    membership = within if cfg.instruments is not None else panel.membership & within
    return dataclasses.replace(panel, membership=membership)
