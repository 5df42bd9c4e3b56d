#!/usr/bin/env bash
# Data-parallel scaling of CPU pretraining: the small MAM-CLIP model with the
# same per-rank batch on 1 and 2 ranks (mpirun), so 2 ranks do twice the work
# per step. Per-step time comes from two runs of different lengths (their
# difference removes start-up and data loading); efficiency is
#   pairs/s on N ranks / (N x pairs/s on 1 rank).
# Each rank computes on THREADS threads (default 1: 2 ranks fill a 2-core
# machine). Also prints the gradient bytes all-reduced per step.
#
#   BUILD=build THREADS=1 BATCH=8 STEPS=6 bash benchmarks/dist/scaling.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-1}
BATCH=${BATCH:-8}
STEPS=${STEPS:-6}
RANKS=${RANKS:-"1 2"}
exe=$BUILD/bin/mamclip
[ -x "$exe" ] || { echo "scaling.sh: $exe not found; build it first (cmake --build $BUILD --target mamclip_cli)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "scaling.sh: mpirun not found (apt install openmpi-bin)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$exe" demo --output "$tmp" --images 400 --set-only >/dev/null

calc() { awk "BEGIN { print $1 }"; }

# Seconds of one pretraining run of $2 steps on $1 ranks.
run() {
  local n=$1 steps=$2 start end
  start=$(date +%s.%N)
  OMP_NUM_THREADS=$THREADS mpirun --oversubscribe --allow-run-as-root -np "$n" -x OMP_NUM_THREADS \
    "$exe" pretrain --data "$tmp/synthetic" model_size=small "data.image_size=[128,96]" \
    data.batch_size="$BATCH" data.effective_batch_size=$((BATCH * n)) data.num_workers=1 \
    trainparams.max_steps="$steps" trainparams.max_epochs=100 trainparams.checkpoint_dir_path="$tmp/runs" \
    trainparams.experiment_name="n$n-$steps" >"$tmp/log-$n-$steps" 2>&1 ||
    { cat "$tmp/log-$n-$steps" >&2; exit 1; }
  end=$(date +%s.%N)
  calc "$end - $start"
}

echo "MAM-CLIP small, ${BATCH} pairs per rank per step, ${THREADS} thread(s) per rank, $(nproc) cores"
printf '%-6s %-14s %-12s %s\n' ranks "s/step" "pairs/s" efficiency
base=""
for n in $RANKS; do
  short=$(run "$n" 2)
  long=$(run "$n" $((2 + STEPS)))
  per_step=$(calc "($long - $short) / $STEPS")
  rate=$(calc "$BATCH * $n / $per_step")
  [ -n "$base" ] || base=$rate
  eff=$(calc "$rate / ($n * $base)")
  printf '%-6s %-14.3f %-12.1f %.2f\n' "$n" "$per_step" "$rate" "$eff"
  grep -h "all-reduced per step" "$tmp/log-$n-$((2 + STEPS))" || true
done
