#!/usr/bin/env bash
# The one prepared GPU check (issue "GPU: a training step near the card's limit"): ≤ 8 minutes on a fresh H200
# machine, one table at the end. Every step has its own time limit and prints a clear line when its input is
# missing, so one absent bundle costs that step only.
#
#   bash benchmarks/gpu_check.sh          # from the project root, with .devdeps/ carried along
#
# Inputs (built beforehand on the CPU machine, never by this script; see the headers of the two scripts):
#   ../shared/gpu/ray-bundle.sh .devdeps   -> .devdeps/ray-cp312.tar.xz                  (distgru train/tune)
#   ../shared/gpu/qlib-bundle.sh .devdeps  -> .devdeps/{qlib-whl,qlib-stub,cn_csi300.tar.xz} (data, qlib's GRU)
#   optional .devdeps/extra-whl/*.whl (cp312): what the image lacks, e.g. numba + llvmlite for distgru's features
# Exit status: 2 without a CUDA device (it stops before the GPU checks), 1 if a step failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
site=${GPU_CHECK_SITE:-/tmp/site} data=${GPU_CHECK_DATA:-/tmp/qd} out=${GPU_CHECK_OUT:-/tmp/gpu_check}
mkdir -p "$site" "$data" "$out"
table=$out/table.txt
: > "$table"
failed=0
row() { printf '%-34s | %s\n' "$1" "$2" | tee -a "$table"; }

# 1. Carried bundles (unpacked before the CUDA check, so a CPU dry run exercises them too).
if [ -f .devdeps/ray-cp312.tar.xz ]; then
  tar xJf .devdeps/ray-cp312.tar.xz -C "$site" && row "ray bundle" "unpacked to $site"
else
  row "ray bundle" "MISSING .devdeps/ray-cp312.tar.xz: distgru train/tune steps will say so"
fi
if compgen -G ".devdeps/qlib-whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$site" .devdeps/qlib-whl/*.whl \
    && row "qlib bundle" "installed to $site"
else
  row "qlib bundle" "MISSING .devdeps/qlib-whl: qlib's GRU step will say so"
fi
# Anything else the image lacks (numba + llvmlite for distgru's feature kernels), as cp312 wheels.
if compgen -G ".devdeps/extra-whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$site" .devdeps/extra-whl/*.whl \
    && row "extra wheels" "installed to $site: $(cd .devdeps/extra-whl && ls ./*.whl | cut -d- -f1 | tr '\n' ' ')"
fi
if [ -f .devdeps/cn_csi300.tar.xz ]; then
  tar xJf .devdeps/cn_csi300.tar.xz -C "$data" && row "csi300 data" "unpacked to $data/cn_csi300"
else
  row "csi300 data" "MISSING .devdeps/cn_csi300.tar.xz: the csi300 steps will say so"
fi
export PYTHONPATH=$site:$root/.devdeps/qlib-stub:$root${PYTHONPATH:+:$PYTHONPATH}
py=python3
has() { $py -c "import $1" 2> /dev/null; }

# 2. The first CUDA call: without a device nothing below means anything.
if ! $py -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  row "cuda" "no CUDA device: stopping before the GPU checks"
  exit 2
fi
row "cuda" "$($py -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)')"

# Runs "$@" under a time limit, logging to $log; sets $rc and $took, and writes the row itself on failure.
timed() {
  local name=$1 limit=$2 t0=$SECONDS; shift 2
  log=$out/${name//[^A-Za-z0-9.-]/_}.log
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$? took=$((SECONDS - t0))
  if [ $rc -eq 124 ]; then row "$name" "TIMED OUT after ${limit}s (log: $log)"; failed=1
  elif [ $rc -ne 0 ]; then row "$name" "FAILED rc=$rc: $(tail -n 1 "$log") (log: $log)"; failed=1
  fi
}

# 3. The CUDA tests: bf16/fp16 recurrence dtypes; with numba (distgru's loop imports the feature kernels) also
#    graphed vs eager steps and streamed vs resident panel.
if has pytest; then
  gpu_tests=(tests/test_precision.py)
  if has numba; then gpu_tests+=(tests/test_gpu_paths.py); fi
  timed "pytest -m gpu" 120 $py -m pytest -q -p no:cacheprovider -m gpu "${gpu_tests[@]}"
  [ $rc -eq 0 ] && row "pytest -m gpu" "$(tail -n 1 "$log") (${gpu_tests[*]})"
else
  row "pytest -m gpu" "SKIPPED: pytest is not installed on this machine"
fi

# 4. A bare eager step, distgru's eager and graphed steps and its end-to-end loop, same model and batch (rows
#    printed by the script).
timed "step timing" 120 $py benchmarks/gpu_check.py step
[ $rc -eq 0 ] && tee -a "$table" < "$log"

# 5-7 need Ray (distgru train/tune), the data, and qlib's GRU its own bundle.
csi="$data/cn_csi300"
if ! has ray; then
  row "distgru train csi300-2010" "SKIPPED: Ray not importable (carry .devdeps/ray-cp312.tar.xz)"
  row "tune 4x0.25 vs 1x1 GPU" "SKIPPED: Ray not importable"
elif ! has numba; then
  row "distgru train csi300-2010" "SKIPPED: numba not importable (distgru's feature kernels need it)"
  row "tune 4x0.25 vs 1x1 GPU" "SKIPPED: numba not importable"
else
  if [ -f "$csi/calendars/day.txt" ]; then
    timed "distgru train csi300-2010" 170 $py -m distgru.cli train configs/gru_alpha158.yaml --gpu \
      --set data.provider="$csi" --set data.cache_dir="$out/cache" --output "$out/train"
    [ $rc -eq 0 ] && row "distgru train csi300-2010" "$($py benchmarks/gpu_check.py run-summary "$out/train")"
  else
    row "distgru train csi300-2010" "SKIPPED: no data at $csi (carry .devdeps/cn_csi300.tar.xz)"
  fi
  # Same smoke search, fifo, 3 epochs: 4 trials sharing the card at 0.25 GPU each against 1 trial on it alone.
  tune=(-m distgru.cli tune configs/tune_smoke.yaml --set resources.use_gpu=true --set tune.scheduler.kind=fifo
        --set train.n_epochs=3 --set data.cache_dir="$out/cache")
  timed "tune 1 trial x 1 GPU" 60 $py "${tune[@]}" --num-samples 1 --set tune.resources.gpu=1 --output "$out/t1"
  [ $rc -eq 0 ] && row "tune 1 trial x 1 GPU" "${took}s wall"
  timed "tune 4 trials x 0.25 GPU" 60 $py "${tune[@]}" --num-samples 4 --set tune.resources.gpu=0.25 \
    --output "$out/t4"
  [ $rc -eq 0 ] && row "tune 4 trials x 0.25 GPU" "${took}s wall (4 trials; ideal: the 1-trial time)"
fi

# 8. qlib's own GRU (pytorch_gru_ts), 2 epochs on the same card and data.
if ! has qlib; then
  row "qlib pytorch_gru_ts 2 epochs" "SKIPPED: qlib not importable (carry .devdeps/qlib-whl, qlib-stub)"
elif [ ! -f "$csi/calendars/day.txt" ]; then
  row "qlib pytorch_gru_ts 2 epochs" "SKIPPED: no data at $csi"
else
  timed "qlib pytorch_gru_ts 2 epochs" 150 $py benchmarks/qlib_gru.py --protocol csi300-2010 --max-epochs 2 \
    --provider-uri "$csi" --kernels 8 --n-jobs 4 --torch-threads 0 --out "$out/qlib"
  [ $rc -eq 0 ] && row "qlib pytorch_gru_ts 2 epochs" "$($py benchmarks/gpu_check.py qlib-summary "$out/qlib")"
fi

echo
echo "== gpu_check: $(date -u +%FT%TZ) (logs in $out) =="
cat "$table"
exit $failed
