"""Evaluation report: every section and embedded PNG present; a headless-chromium render is not blank."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from distgru.config.schema import BacktestConfig
from distgru.data.panel import BarPanel
from distgru.evaluation.backtest import portfolio_metrics, run_backtest
from distgru.evaluation.report import Section, format_table, html_table, render_page, write_evaluation_report
from distgru.metrics import signal_metrics

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("Signal metrics", "Cumulative IC and Rank IC", "Monthly IC", "Excess return and drawdown",
            "Portfolio: excess_return_with_cost", "Portfolio: excess_return_without_cost", "Turnover")


def small_market(n: int = 30, days: int = 250, seed: int = 0) -> tuple[BarPanel, pd.DataFrame]:
    """A random-walk market and predictions that carry a little of the next-but-one day's return."""
    rng = np.random.default_rng(seed)
    cal = pd.bdate_range("2021-01-04", periods=days)
    ret = rng.normal(0.0003, 0.02, size=(n, days))
    close = (10 * np.exp(np.cumsum(ret, axis=1))).astype(np.float32)
    change = np.full_like(close, np.nan)
    change[:, 1:] = close[:, 1:] / close[:, :-1] - 1
    names = tuple(f"S{i:02d}" for i in range(n))
    fields = {"open": close, "high": close, "low": close, "close": close, "change": change,
              "volume": np.full_like(close, 1e6), "factor": np.ones_like(close)}
    bench = (1000 * np.exp(np.cumsum(ret.mean(axis=0)))).astype(np.float32)
    panel = BarPanel(calendar=cal, instruments=names, fields=fields, membership=np.ones((n, days), bool),
                     benchmark={"close": bench}, benchmark_name="IDX")
    label = np.full_like(ret, np.nan)
    label[:, :-2] = close[:, 2:] / close[:, 1:-1] - 1
    score = 0.2 * np.nan_to_num(label) / 0.02 + rng.normal(size=label.shape)
    idx = pd.MultiIndex.from_product([names, cal], names=["instrument", "datetime"])
    pred = pd.DataFrame({"score": score.ravel(), "label": label.ravel()}, index=idx).swaplevel().reset_index()
    return panel, pred


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    panel, pred = small_market()
    bt = run_backtest(pred[["datetime", "instrument", "score"]], panel, BacktestConfig(topk=10, n_drop=2))
    metrics: dict[str, object] = {**signal_metrics(pred), **portfolio_metrics(bt.report)}
    return write_evaluation_report(pred, bt.report, metrics, tmp_path_factory.mktemp("rep") / "eval.html")


def test_report_has_every_section_and_embedded_pngs(report_html: Path) -> None:
    text = report_html.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4  # cumulative IC, heat map, excess return + drawdown, turnover
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for metric in ("ICIR", "RankICIR", "hit_rate", "annualized_return", "information_ratio", "max_drawdown"):
        assert f"<td>{metric}</td>" in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_report_without_backtest(tmp_path: Path) -> None:
    _, pred = small_market(n=12, days=60)
    out = write_evaluation_report(pred, None, signal_metrics(pred), tmp_path / "sig.html")
    text = out.read_text(encoding="utf-8")
    assert "<h2>Monthly IC</h2>" in text and "Turnover" not in text and text.count("data:image/png") == 2


def test_format_table_and_html_escaping() -> None:
    rows = [{"name": "IC", "value": 0.0123456, "n": 3}, {"name": "Rank IC", "value": float("nan"), "n": 12}]
    assert format_table(rows).splitlines() == [
        "name      value   n",
        "-------  ------  --",
        "IC       0.0123   3",
        "Rank IC          12",
    ]
    page = render_page("a <b>", [Section("s&t", html_table([{"k": "<x>", "v": 1.5}], floatfmt=".1f"))])
    assert "<title>a &lt;b&gt;</title>" in page and "<td>&lt;x&gt;</td><td>1.5</td>" in page
    assert "<h2>s&amp;t</h2>" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (apt-get install chromium)")
def test_chromium_screenshot_is_not_blank(report_html: Path, tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,3000",
           report_html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    ink = (pixels.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert ink > 0.03, f"screenshot looks blank: {ink:.1%} non-white pixels"
    colored = (pixels.max(axis=2) - pixels.min(axis=2) > 0.2).mean()  # plots and heat map bring colour
    assert colored > 0.01, f"no coloured plot pixels: {colored:.1%}"
