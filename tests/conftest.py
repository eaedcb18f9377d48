"""Shared fixtures. Real-data tests find ../shared beside the repository (or $DISTGRU_SHARED) and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("DISTGRU_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "data" / "cn_csi300" / "calendars" / "day.txt").is_file():
        pytest.skip(f"shared CSI300 data not found at {root} (set DISTGRU_SHARED); users don't have it")
    return root


@pytest.fixture(scope="session")
def csi300_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "cn_csi300"
