#!/usr/bin/env bash
# Create the side-by-side qlib reference environment used ONLY by benchmarks/qlib_*.py.
#
# distgru never imports qlib: this venv lives outside the repository (default: qlib-venv beside the repository, or $QLIB_VENV) and is
# separate from the project venv, so qlib's pins (and its mlflow/jupyter/cvxpy dependency tree) never
# touch distgru's environment.
#
# Usage:   bash benchmarks/qlib_env.sh [VENV_DIR]          (or QLIB_VENV=DIR bash benchmarks/qlib_env.sh)
# Then:    . ../qlib-venv/bin/activate && python benchmarks/qlib_features.py ...
#
# Order matters: torch is installed FIRST, pinned to the local CPU wheel (2.13.0+cpu, found through pip's
# find-links on this machine); installing pyqlib first would let pip resolve some other torch build and
# download gigabytes of CUDA wheels.
set -euo pipefail

VENV=${1:-${QLIB_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/qlib-venv}}
PYTHON=${PYTHON:-python3.11}           # pyqlib 0.9.7 ships a cp311 manylinux wheel (compiled Cython ops)
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYQLIB_VERSION=${PYQLIB_VERSION:-0.9.7}
PANDAS_VERSION=${PANDAS_VERSION:-3.1.1}
NUMPY_VERSION=${NUMPY_VERSION:-2.4.6}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# 1. torch, CPU wheel, before anything that depends on it
"${PIP[@]}" install -q "torch==${TORCH_VERSION}"

# 2. qlib itself, binary wheel only (never build qlib's Cython extensions from source here), with its
#    full declared dependency tree (mlflow, lightgbm, cvxpy, jupyter, ...), as a qlib user gets it.
#    torch is re-pinned so the resolver can't swap it. numpy/pandas are pinned to the versions of the
#    project venv: with pandas 3.1.1 + numpy 2.4.6, D.features reproduces the shared reference values
#    (shared/reference/qlib_alpha158_values.parquet, all 158 features + LABEL0, 12 instruments) bit for
#    bit; with pandas 2.3.3 ~0.07% of values differ (degenerate near-constant windows in Std/Rsquare:
#    WVMA*, VSTD*, RSQR30/60 flip between 0/NaN and 1e9-scale noise). pyqlib 0.9.7's compiled
#    rolling/expanding kernels import and run under numpy 2.4.
"${PIP[@]}" install -q --only-binary=pyqlib \
  "pyqlib==${PYQLIB_VERSION}" "torch==${TORCH_VERSION}" "pandas==${PANDAS_VERSION}" "numpy==${NUMPY_VERSION}"

# 3. smoke test: the compiled extensions load and the pieces the benchmarks use import
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import qlib, torch, numpy, pandas
from qlib.data._libs import rolling, expanding  # compiled Cython kernels
from qlib.contrib.data.loader import Alpha158DL
from qlib.contrib.model.pytorch_gru_ts import GRU
from qlib.contrib.eva.alpha import calc_ic
fields, names = Alpha158DL.get_feature_config()
assert len(names) == 158, len(names)
print("qlib env OK:", {p: md.version(p) for p in ("pyqlib", "torch", "numpy", "pandas", "joblib", "mlflow")})
PY
echo "qlib venv ready: $VENV"
