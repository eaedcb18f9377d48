"""Time qlib's own expression engine computing all of Alpha158 (+ label) on the shared CSI300 data.

Runs ONLY inside the separate qlib venv (benchmarks/qlib_env.sh); distgru never imports qlib.

    . ${QLIB_VENV:-../qlib-venv}/bin/activate
    nice -n 10 python benchmarks/qlib_features.py --runs 1 --out /work/bench_out/qlib_alpha158_all.parquet

What is timed (per run, end to end): ``D.features(D.instruments("csi300"), fields, start, end)`` with the 158
Alpha158 expressions taken from qlib's own ``Alpha158DL.get_feature_config()`` plus the benchmark label
``Ref($close, -2)/Ref($close, -1) - 1``. qlib is initialised with its client defaults (no expression cache,
no dataset cache), so every run recomputes everything from the .bin files. ``D.instruments("csi300")`` makes
qlib mask each stock's rows to its index-membership spans, which is what distgru's masked output matches.

Reported: wall seconds per run and their median, peak RSS of this process and of its worker processes
(``resource.getrusage``; qlib computes instruments in joblib worker processes), qlib's kernel count.
The frame of the last run is cast to float32, indexed (datetime, instrument) sorted, and written to --out
(outside the repository), with a JSON summary next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

LABEL_EXPR = "Ref($close, -2)/Ref($close, -1) - 1"


def _peak_rss_mib(who: int) -> float:
    # Linux reports ru_maxrss in KiB; for RUSAGE_CHILDREN it is the largest single (waited-for) child.
    return resource.getrusage(who).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider-uri", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cn_csi300"))
    p.add_argument("--market", default="csi300")
    p.add_argument("--start", default="2010-01-04")
    p.add_argument("--end", default="2026-05-08")
    p.add_argument("--runs", type=int, default=1, help="timed repetitions; the median is reported")
    p.add_argument(
        "--kernels",
        default="2",
        help="qlib worker processes for D.features ('default' keeps qlib's own: max(cpu_count-2, 1))",
    )
    bench_out = Path(__file__).resolve().parents[2] / "bench_out"
    p.add_argument("--out", default=str(bench_out / "qlib_alpha158_all.parquet"), help="output Parquet file")
    p.add_argument("--no-write", action="store_true", help="skip writing the Parquet file")
    args = p.parse_args(argv)

    import numpy as np
    import pandas as pd
    import qlib
    from qlib.config import NUM_USABLE_CPU, C
    from qlib.contrib.data.loader import Alpha158DL
    from qlib.data import D

    init_kw: dict = {"provider_uri": args.provider_uri, "region": "cn"}
    if args.kernels != "default":
        init_kw["kernels"] = int(args.kernels)
    qlib.init(**init_kw)
    assert C["expression_cache"] is None and C["dataset_cache"] is None, "caches must be off"

    fields, names = Alpha158DL.get_feature_config()
    assert len(fields) == len(names) == 158
    fields = list(fields) + [LABEL_EXPR]
    names = list(names) + ["LABEL0"]

    times: list[float] = []
    df = None
    for i in range(args.runs):
        del df  # release the previous frame before timing the next run
        t0 = time.perf_counter()
        insts = D.instruments(args.market)
        df = D.features(insts, fields, start_time=args.start, end_time=args.end)
        dt = time.perf_counter() - t0
        times.append(dt)
        print(
            f"run {i + 1}/{args.runs}: {dt:.1f} s  frame {df.shape}  "
            f"peak RSS self {_peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB, "
            f"children {_peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB",
            flush=True,
        )

    assert df is not None
    df.columns = names
    df = df.astype(np.float32)
    df = df.swaplevel().sort_index()  # (datetime, instrument), as distgru / the shared reference file
    df.index = df.index.set_names(["datetime", "instrument"])

    summary = {
        "what": "qlib D.features(D.instruments(market), Alpha158 158 exprs + label), caches off",
        "market": args.market,
        "start": args.start,
        "end": args.end,
        "runs": len(times),
        "wall_s": times,
        "wall_s_median": statistics.median(times),
        "peak_rss_self_mib": _peak_rss_mib(resource.RUSAGE_SELF),
        "peak_rss_largest_child_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN),
        "kernels": C.get_kernels("day"),
        "qlib_default_kernels": NUM_USABLE_CPU,
        "joblib_backend": C["joblib_backend"] or "loky",
        "cpu_count": os.cpu_count(),
        "rows": int(df.shape[0]),
        "cols": int(df.shape[1]),
        "n_instruments": int(df.index.get_level_values("instrument").nunique()),
        "n_days": int(df.index.get_level_values("datetime").nunique()),
        "nan_frac": float(np.isnan(df.to_numpy()).mean()),
        "versions": {
            "python": platform.python_version(),
            "pyqlib": qlib.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out)
        summary["parquet"] = str(out)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
