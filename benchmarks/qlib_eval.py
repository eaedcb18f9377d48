"""qlib's own evaluation of one prediction file: ``calc_ic`` and the TopK-Dropout daily backtest.

Runs ONLY in the qlib venv (``$QLIB_VENV/bin/python benchmarks/qlib_eval.py ...``), as a child of
``benchmarks/eval_vs_qlib.py``. Reads ``pred.pkl`` (DataFrame, column ``score``, MultiIndex (datetime,
instrument)) and ``label.pkl`` (same index, column ``label``), writes into ``--out``:

- ``qlib_ic.parquet``: per-datetime ``IC`` and ``RankIC`` from ``qlib.contrib.eva.alpha.calc_ic``;
- ``qlib_report.parquet``: the daily portfolio report of ``qlib.contrib.evaluate.backtest_daily``
  (TopkDropoutStrategy(topk 50, n_drop 5), limit_threshold 0.095, deal_price close, costs 5/15 bp, min 5,
  account 1e8, benchmark SH000300);
- ``qlib_eval.json``: the IC summary, ``risk_analysis`` of excess return with/without cost, timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--provider", required=True)
    p.add_argument("--pred", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--skip-backtest", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import qlib
    from qlib.contrib.eva.alpha import calc_ic
    from qlib.contrib.evaluate import backtest_daily, risk_analysis
    from qlib.contrib.strategy import TopkDropoutStrategy

    qlib.init(provider_uri=args.provider, region="cn", kernels=1)
    pred = pd.read_pickle(args.pred)
    label = pd.read_pickle(args.label)
    t0 = time.perf_counter()
    ic, ric = calc_ic(pred.iloc[:, 0], label.iloc[:, 0])  # as SigAnaRecord
    ic_s = time.perf_counter() - t0
    pd.DataFrame({"IC": ic, "RankIC": ric}).to_parquet(out / "qlib_ic.parquet")
    summary = {"IC": float(ic.mean()), "ICIR": float(ic.mean() / ic.std()), "RankIC": float(ric.mean()),
               "RankICIR": float(ric.mean() / ric.std()), "calc_ic_s": ic_s}
    if not args.skip_backtest:
        strategy = TopkDropoutStrategy(signal=pred["score"], topk=50, n_drop=5)
        t0 = time.perf_counter()
        report, _positions = backtest_daily(
            start_time=args.start, end_time=args.end, strategy=strategy, account=1e8, benchmark="SH000300",
            exchange_kwargs={"limit_threshold": 0.095, "deal_price": "close", "open_cost": 0.0005,
                             "close_cost": 0.0015, "min_cost": 5})
        summary["backtest_s"] = time.perf_counter() - t0
        report.to_parquet(out / "qlib_report.parquet")
        for name, r in (("excess_return_without_cost", report["return"] - report["bench"]),
                        ("excess_return_with_cost", report["return"] - report["bench"] - report["cost"])):
            summary[name] = {k: float(v) for k, v in risk_analysis(r)["risk"].items()}
    (out / "qlib_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
