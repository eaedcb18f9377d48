"""Market profiles: the trading rules a backtest and every annualised figure depend on.

``market.profile`` picks a preset (``cn``: qlib's China A-share defaults, which qlib-parity checks use; ``us``: US
equities); any field set beside it overrides the preset, and ``custom`` takes no preset (every field must be set).
``Config`` resolves the profile into ``backtest.*`` (keys written there still win) and ``data.benchmark``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from distgru.config.loader import ConfigError

NO_LIMIT = math.inf
"""``limit_threshold`` of a market without daily price limits: no |change| reaches it."""

PROFILES: dict[str, dict[str, Any]] = {
    # qlib's defaults (port_analysis_config of its benchmark YAMLs, _freq_scaler 'day' = 238): parity depends on
    # these exact numbers, so they are never changed here.
    "cn": {"trading_days": 238, "limit_threshold": 0.095, "trade_unit": 100, "open_cost": 0.0005,
           "close_cost": 0.0015, "min_cost": 5.0, "benchmark": "SH000300"},
    # US equities: ~252 sessions a year, no daily price limits, single-share lots, commission-free brokers with
    # ~1 bp of spread/impact each way plus the SEC/FINRA sell-side fees (~0.3 bp), no minimum fee. No standard
    # index symbol is assumed: a file market names its own (--benchmark / data.benchmark).
    "us": {"trading_days": 252, "limit_threshold": NO_LIMIT, "trade_unit": 1, "open_cost": 0.0001,
           "close_cost": 0.00013, "min_cost": 0.0, "benchmark": None},
}
BACKTEST_KEYS = ("trading_days", "limit_threshold", "trade_unit", "open_cost", "close_cost", "min_cost")
"""Fields the profile hands to ``backtest`` (where an explicit value wins)."""


@dataclass(kw_only=True)
class MarketConfig:
    """Trading rules of the market the data comes from. null fields take the profile's value."""

    profile: Literal["cn", "us", "custom"] = "cn"
    """Preset: ``cn`` (qlib's A-share rules, for qlib parity), ``us``, or ``custom`` (every field below set)."""
    trading_days: int | None = None
    """Trading days per year for annualised return and information ratio (cn 238 as qlib, us 252)."""
    limit_threshold: float | None = None
    """|daily change| at which a stock is at its price limit and cannot trade (cn 0.095); ``inf`` for no limit
    (us)."""
    trade_unit: int | None = None
    """Shares per lot; buys are rounded down to it (cn 100, us 1)."""
    open_cost: float | None = None
    """Cost rate on buys (cn 0.0005, us 0.0001)."""
    close_cost: float | None = None
    """Cost rate on sells (cn 0.0015 incl. stamp duty, us 0.00013)."""
    min_cost: float | None = None
    """Minimum cost per trade in account currency (cn 5, us 0)."""
    benchmark: str | None = None
    """Benchmark symbol used when ``data.benchmark`` is ``market`` (cn SH000300; us none: name your index)."""

    def __post_init__(self) -> None:
        preset = PROFILES.get(self.profile)
        if preset is None:
            missing = [f.name for f in fields(self) if f.name not in ("profile", "benchmark")
                       and getattr(self, f.name) is None]
            if missing:
                raise ConfigError(f"market.{missing[0]}: required when market.profile is 'custom' (unset: "
                                  f"{', '.join(missing)}); or use profile 'cn' or 'us' and override fields")
        else:
            for key, value in preset.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        assert self.trading_days is not None and self.trade_unit is not None  # filled above
        if not 1 <= self.trading_days <= 366:
            raise ConfigError(f"market.trading_days: {self.trading_days} must be in 1..366")
        if self.trade_unit < 1:
            raise ConfigError(f"market.trade_unit: {self.trade_unit} must be >= 1")
        for key in ("limit_threshold", "open_cost", "close_cost", "min_cost"):
            value = getattr(self, key)
            if math.isnan(value) or value < 0 or (key == "limit_threshold" and value == 0):
                need = "> 0 (inf: no limit)" if key == "limit_threshold" else ">= 0"
                raise ConfigError(f"market.{key}: {value!r} must be {need}")

    def backtest_defaults(self) -> dict[str, Any]:
        """The values this market gives the backtest fields left unset."""
        return {key: getattr(self, key) for key in BACKTEST_KEYS}
