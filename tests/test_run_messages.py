"""What a run prints about itself: the feature cache says hit or miss once, and a local Ray starts without Ray's
token-authentication warning (the variable is set only for a Ray distgru starts, never over the user's)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from distgru.config import ResourcesConfig, SyntheticConfig
from distgru.data.synthetic import generate_market
from distgru.processing.pipeline import features_for
from distgru.training import ray_train


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


class _FakeRay:
    def __init__(self) -> None:
        self.mode_at_init: str | None = "unset"

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.mode_at_init = os.environ.get(ray_train.AUTH_MODE_ENV)

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(("user", "address", "expected"), [(None, None, "token"), ("disabled", None, "disabled"),
                                                          (None, "ray://head:10001", None)])
def test_local_ray_names_token_auth_unless_user_chose(monkeypatch: pytest.MonkeyPatch, user: str | None,
                                                         address: str | None, expected: str | None) -> None:
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_train.ray_watchdog, "spawn", lambda pid: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if user is None:
        monkeypatch.delenv(ray_train.AUTH_MODE_ENV, raising=False)
    else:
        monkeypatch.setenv(ray_train.AUTH_MODE_ENV, user)
    with ray_train.ray_session(ResourcesConfig(address=address)):
        pass
    assert fake.mode_at_init == expected  # an attached cluster keeps its own (token) auth
    assert os.environ.get(ray_train.AUTH_MODE_ENV) == user  # restored after the local Ray is gone
