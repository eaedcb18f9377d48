"""What a run prints about itself: the feature cache says hit or miss once. (That a local Ray starts without Ray's
token-authentication notice is checked with a real Ray start in tests/test_ray_watchdog.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from distgru.config import SyntheticConfig
from distgru.data.synthetic import generate_market
from distgru.processing.pipeline import features_for


def test_feature_cache_says_hit_or_miss_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    bars = generate_market(SyntheticConfig(n_instruments=10, n_days=120))
    label = "Ref($close, -2) / Ref($close, -1) - 1"
    for outcome in ("miss", "hit"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="distgru.processing.cache"):
            features_for(bars, "alpha158", ["KLEN"], label, tmp_path, progress=True)
        said = caplog.text + capsys.readouterr().err
        assert said.count(f"feature cache {outcome}") == 1, said
        assert f"feature cache {'hit' if outcome == 'miss' else 'miss'}" not in said
        assert "reading cached features" not in said  # announced a read that a miss never made
        assert ("computing alpha158 features" in said) == (outcome == "miss")
