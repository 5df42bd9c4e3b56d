#!/usr/bin/env bash
# ConvNeXt: mamclip (bench_convnext) against timm + PyTorch
# (convnext_torch.py) at the same shapes, device and thread count, side by side:
# forward and training-step times, then the peak memory of one training step
# at MAM-CLIP's input size (1024 x 768) with and without gradient
# checkpointing, each in a process of its own.
#
#   benchmarks/models/convnext_vs_torch.sh [BUILD_DIR] [PYTHON]
#
# BUILD_DIR holds a Release build with benchmarks (default: build); PYTHON has
# torch and timm (tools/requirements.txt; default: python3). Environment:
# THREADS (default: all cores), ROUNDS (default 3), CASES (default fwd:1x224x224,train:4x224x224),
# ITERS (default 5), MEMORY (default 1x1024x768; empty skips the memory runs),
# MODEL (convnext_tiny or convnext_small; default convnext_tiny), DEVICE (cpu, cuda,
# cuda:N; default cpu) and PRECISION (fp32, bf16, fp16; default fp32). On a GPU the
# memory runs (a CPU measure) are skipped and PyTorch runs channels_last, e.g. issue
# 7's ConvNeXt-S training step:
#   DEVICE=cuda PRECISION=bf16 MODEL=convnext_small CASES=train:8x1024x768 \
#     benchmarks/models/convnext_vs_torch.sh build-gpu
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build}"
python="${2:-python3}"
threads="${THREADS:-$(nproc)}"
cases="${CASES:-fwd:1x224x224,train:4x224x224}"
iters="${ITERS:-5}"
rounds="${ROUNDS:-3}"
memory="${MEMORY-1x1024x768}"
model="${MODEL:-convnext_tiny}"
device="${DEVICE:-cpu}"
precision="${PRECISION:-fp32}"
[[ $device == cpu && $precision == fp32 ]] || memory=""

source "$here/rounds.sh"

bench="$build/benchmarks/bench_convnext"
[ -x "$bench" ] || { echo "convnext_vs_torch: $bench not found; build it: ninja -C $build bench_convnext" >&2; exit 1; }

where='--model "$model" --device "$device" --precision "$precision"'
run_rounds 'OMP_NUM_THREADS=$threads "$bench" --cases "$cases" --iters "$iters" '"$where" \
  '"$python" "$here/convnext_torch.py" --threads "$threads" --cases "$cases" --iters "$iters" '"$where"
echo -n "$ours"
echo -n "$theirs"
echo
printf '%-26s %14s %14s %20s   (best median of %d rounds)\n' "case" "mamclip ms" "pytorch ms" "time ratio (ours/pt)" "$rounds"
paste <(best_medians "$ours") <(best_medians "$theirs") | while IFS=$'\t' read -r a b; do
  key="$(sed -E 's/.*convnext_[a-z]+ (.* [0-9]+x[0-9]+) (threads|device).*/\1/' <<<"$a")"
  ma="$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$a")"
  mb="$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$b")"
  printf '%-26s %14s %14s %20s\n' "$key" "$ma" "$mb" "$(awk -v x="$ma" -v y="$mb" 'BEGIN { printf "%.2f", x / y }')"
done

[ -n "$memory" ] || exit 0
echo
for ckpt in "" "--checkpointing"; do
  OMP_NUM_THREADS=$threads "$bench" --model "$model" --memory "$memory" $ckpt
  "$python" "$here/convnext_torch.py" --model "$model" --threads "$threads" --memory "$memory" $ckpt
done
