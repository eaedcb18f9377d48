"""One entry point from a ``DataConfig`` to a ``BarPanel``, whatever the source."""

from __future__ import annotations

import dataclasses

import numpy as np

from distgru.config import DataConfig
from distgru.data.panel import BarPanel


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
                                   benchmark=cfg.benchmark, fields=fields, missing_fields_ok=True,
                                   zero_volume_as_missing=cfg.zero_volume_as_missing)
    else:
        from distgru.data.tabular import load_long_table

        assert cfg.path is not None
        panel = load_long_table(cfg.path, fmt=cfg.source, benchmark=cfg.benchmark,
                                zero_volume_as_missing=cfg.zero_volume_as_missing)
        if cfg.instruments is not None:
            panel = panel.select(instruments=[s.upper() for s in cfg.instruments])
    within = _within_bars(panel)
    # Named instruments are not masked to a universe (qlib's D.features on a list applies no spans).
    membership = within if cfg.instruments is not None else panel.membership & within
    return dataclasses.replace(panel, membership=membership)
