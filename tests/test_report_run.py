"""The evaluation page shows the run: facts (bars, universe, market rules), learning curves with the best epoch,
the key plots near the top of a 1400-px-wide window even with 64 months of IC, long tables collapsed, the config."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from distgru.config import config_from_dict
from distgru.evaluation.evaluate import evaluate_run
from distgru.evaluation.report import plot_learning_curves
from distgru.training.rundir import METRICS_FILE, PREDICTIONS_FILE, write_config
from tests.test_report import CHROMIUM, small_market

KEY_PLOTS = ("learning curves", "cumulative IC", "excess return")
TOP_LIMIT = 1800


@pytest.fixture(scope="module")
def run_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    panel, pred = small_market(n=20, days=64 * 21)  # 64 months: the monthly table that used to push plots down
    run = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({"market": {"profile": "us"}, "backtest": {"topk": 5, "n_drop": 1}})
    write_config(run / "config.yaml", cfg)
    pred.to_parquet(run / PREDICTIONS_FILE)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "valid_score": -0.9 - (e - 3) ** 2 / 10, "best_epoch": min(e, 3)}
            for e in range(1, 7)]
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_run(run, cfg=cfg, panel=panel)
    return run / "report.html"


def test_page_shows_the_run(run_page: Path) -> None:
    text = run_page.read_text(encoding="utf-8")
    assert "<h2>Run</h2>" in text and "<h2>Learning curves</h2>" in text and "<h2>Config</h2>" in text
    assert "252 trading days a year" in text and "annualised over 252 days" in text
    assert f"{64 * 21} days" in text and "20 instruments" in text and "<td>price limit</td><td>none</td>" in text
    assert "profile: us" in text  # the resolved config, inside a collapsed block
    # Long tables sit in <details>, after every plot.
    months = re.search(r"<details><summary>monthly IC table \((\d+) rows\)</summary><table>", text)
    assert months and int(months.group(1)) >= 60
    assert text.index("<details>") > text.rindex("<img")


def test_learning_curves_mark_the_best_epoch() -> None:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "valid_score": float(-abs(e - 2)), "best_epoch": min(e, 2)}
            for e in range(1, 5)]
    fig = plot_learning_curves(rows, "loss")
    left, right = fig.axes
    assert list(left.lines[0].get_xdata()) == [1, 2, 3, 4]  # epochs from 1
    star = right.lines[-1]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([2], [0.0])
    assert "best epoch 2" in [t.get_text() for t in right.get_legend().get_texts()]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (apt-get install chromium)")
def test_key_plots_are_near_the_top(run_page: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const tops = {}; for (const img of "
              "document.querySelectorAll('img')) tops[img.alt] = img.getBoundingClientRect().top; "
              "document.body.setAttribute('data-tops', JSON.stringify(tops)); });</script>")
    probe.write_text(run_page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=5000",
           "--dump-dom", probe.resolve().as_uri()]
    dom = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-tops="([^"]*)"', dom)
    assert found, "the probe did not run"
    tops = json.loads(found.group(1).replace("&quot;", '"'))
    for alt in KEY_PLOTS:
        assert 0 < tops[alt] < TOP_LIMIT, tops
    assert tops["monthly IC heat map"] > tops["excess return"]  # laid out, not all at 0
