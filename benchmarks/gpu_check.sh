#!/usr/bin/env bash
# The GPU check: one command that proves training, CKA and the paper's contrast on a GPU and
# writes docs/gpu-results.md (date, GPU, torch, and every section's output). About 9 minutes on
# one H200 from a bare machine. From the repository root:
#
#   bash benchmarks/gpu_check.sh              # on a machine with CUDA
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU with tiny sizes (CI runs this)
#
# Python packages: the project's own environment, or, on a machine without mlflow and optuna
# (and no network), the wheels that `bash benchmarks/prepare_gpu_check.sh` put in .gpu/wheels,
# installed here into a private folder; the project itself is used from the checkout. Data: the
# 1/16 CIFAR-10 folder that script puts in .gpu/cifar10, unless WIDEDEEP_DATA_DIR is set.
#   a. the `cuda` tests: every entry point once on the device, CKA on the device against the
#      CPU's float64 (this project's ResNets, a torchvision ResNet-18 and a ViT), bf16 close to
#      float32; then the precision of each engine, measured;
#   b. the training loop against a bare step, images/s and model FLOP utilisation; packs of seeds
#      (train -P seeds=...) against one model alone: the pack's images/s, each model's, the gain;
#   c. the CKA engine against pytorch-cka on the same layers and batches;
#   d. the `gpu` study preset: a depth series and a width series of ResNets, four seeds each
#      trained as packs, on 1/16 of CIFAR-10 with the paper's recipe, analysed with PC1, dominant
#      images and their causal test; per architecture, the mean and spread over seeds.
# A lent GPU comes with minutes, not hours: every section has a time cap, and GPU_CHECK_BUDGET
# (seconds, default: none) bounds the whole check. A section that fails or runs out of time says
# so in the results and the next one still runs. GPU_CHECK_LOGS=DIR keeps each section's full log.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dry=false
[ "${1:-}" = "--dry-run" ] && dry=true

python=${PYTHON:-python3}
if ! "$python" -c "import mlflow, optuna" 2>/dev/null; then
  [ -d .gpu/wheels ] || { echo "mlflow and optuna are missing: run benchmarks/prepare_gpu_check.sh where pip works" >&2; exit 1; }
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/widedeep-site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/widedeep-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${WIDEDEEP_DATA_DIR:-}" ] && [ -d .gpu/cifar10 ]; then export WIDEDEEP_DATA_DIR=$repo/.gpu/cifar10; fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
logs=${GPU_CHECK_LOGS:-$work/logs}
mkdir -p "$logs"
budget=${GPU_CHECK_BUDGET:-0}  # counted from the script's start, the wheels' install included

# capped CAP NAME CMD...: runs CMD for at most CAP seconds (less if the budget ends sooner), its
# whole output kept in $logs/NAME.log; says how it ended when that was not success.
capped() {
  local cap=$1 name=$2 rc=0
  shift 2
  : > "$logs/$name.log"
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - SECONDS))
    [ "$left" -lt "$cap" ] && cap=$left
  fi
  if [ "$cap" -le 0 ]; then echo "($name skipped: the check's time budget is spent)"; return 1; fi
  timeout -k 10 "$cap" "$@" > "$logs/$name.log" 2>&1 || rc=$?
  case $rc in
    0) ;;
    124|137) echo "($name stopped at its time cap of ${cap} s; the last lines of its log follow)" ;;
    *) echo "($name exited with status $rc; the last lines of its log follow)" ;;
  esac
  return $rc
}
if $dry; then
  device=cpu preset=smoke out=${GPU_CHECK_OUT:-$work/gpu-results.md}
  tests_cap=400  # the entry-point test trains every stage's models on two CPU cores
  precision_args="--depth 8 --width 0.5 --examples 100 --batch-size 50"
  train_args="--models 8x0.5 --examples 256 --test-examples 100 --repeats 1"
  pack_args=("--models 8x0.5 --pack 1,3 --examples 256 --test-examples 100 --repeats 1")
  cka_args="--depth 8 --width 0.5 --batches 1 --batch-size 64 --repeats 1 --threads 2"
  measures_args="--depth 8 --width 0.5 --batches 1 --batch-size 64 --repeats 1 --threads 2"
else
  device=cuda preset=gpu out=${GPU_CHECK_OUT:-docs/gpu-results.md}
  tests_cap=150
  precision_args="--depth 56 --examples 1024"
  train_args="--models 20x1,56x1,20x8 --examples 25600 --test-examples 10000 --repeats 3"
  # the pack issue's targets: ResNet-20 w1 x10 >= 8x one alone, ResNet-56 w1 x10 >= 5x, ResNet-20 w8 x2
  pack_args=("--models 20x1,56x1 --pack 1,10 --examples 12800 --test-examples 10000 --repeats 3"
             "--models 20x8 --pack 1,2 --examples 12800 --test-examples 10000 --repeats 3")
  cka_args="--depth 56 --layers all --batches 4 --threads 16"
  measures_args="--depth 56 --batches 4 --threads 16"
fi
gpu=$("$python" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU dry run)')")

section() { printf '\n## %s\n\n```\n' "$1"; }
end() { printf '```\n'; }
{
  echo "# GPU check results"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); device $device: $gpu; torch $("$python" -c 'import torch; print(torch.__version__)'); $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
  echo "Produced by \`bash benchmarks/gpu_check.sh$($dry && echo ' --dry-run')\`."

  section "a. cuda tests on $device, and the precision of each engine"
  capped $tests_cap cuda-tests env WIDEDEEP_TEST_DEVICE=$device "$python" -m pytest -q -m cuda -p no:cacheprovider -W ignore \
    --tb=short tests/test_gpu.py && tail -n 3 "$logs/cuda-tests.log" || tail -n 40 "$logs/cuda-tests.log"
  capped 60 precision "$python" benchmarks/precision.py --device "$device" $precision_args || true
  cat "$logs/precision.log"
  end

  section "b. training loop against the bare step"
  capped 120 train "$python" benchmarks/train.py --device "$device" $train_args || true
  grep -v " INFO " "$logs/train.log" || true
  for i in "${!pack_args[@]}"; do
    capped 100 "packs-$i" "$python" benchmarks/train.py --device "$device" ${pack_args[$i]} || true
    grep -v " INFO " "$logs/packs-$i.log" | grep -v "^$" || true
  done
  end

  section "c. the CKA engine against pytorch-cka"
  capped 90 cka "$python" benchmarks/cka.py --device "$device" $cka_args || true
  cat "$logs/cka.log"
  capped 60 measures "$python" benchmarks/measures.py --device "$device" $measures_args || true
  cat "$logs/measures.log"
  end

  section "d. study preset '$preset' on $device"
  (cd "$work" && capped 900 study env MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" PYTHONWARNINGS=ignore \
    "$python" -m entrypoints.study --preset "$preset" --device "$device" --storage "sqlite:///$work/optuna.db" \
    --out "$work/report") || true
  grep -v "^\s*$" "$logs/study.log" | tail -n 8 || true
  if [ -f "$work/report/comparison/models.csv" ]; then
    "$python" - "$work/report/comparison/models.csv" <<'EOF'
import sys
import pandas as pd
# Per architecture, over its seeds: the mean and spread of what the paper's findings rest on.
cols = ["train_accuracy", "test_accuracy", "block_largest_frac", "block_mean_cka", "block_mean_cka_without_pc1",
        "block_mean_cka_without_dominant", "block_mean_cka_without_random", "pc1_share_in_block", "pc1_share_outside"]
rows = pd.read_csv(sys.argv[1])
cols = [c for c in cols if c in rows]
rows["with_block"] = rows["block_count"].fillna(0) > 0
grouped = rows.groupby(["depth", "width"])
table = grouped[cols].agg(lambda v: f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if v.notna().any() else "-")
table.insert(0, "blocks", grouped["with_block"].sum().astype(int).astype(str) + "/" + grouped.size().astype(str))
print(table.T.to_string())
EOF
  fi
  end
  echo
  echo "The check took $SECONDS s."
} 2>&1 | tee "$out"
echo "written: $out"
