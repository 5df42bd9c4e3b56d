#!/usr/bin/env bash
# One MAM-CLIP pretraining step: mamclip (bench_vlmodel) against the
# reference VLModel under PyTorch (vlmodel_torch.py: timm ConvNeXt +
# transformers BertModel + the fusion Transformer) at the same shapes and
# thread count, side by side: ms per step and ratio = ours / PyTorch, with the
# first step's loss of each side (random weights: finite and of similar size,
# not equal). A step is zero_grad, forward in train mode, contrastive +
# 0.5 * MLM loss, backward and an AdamW update.
#
#   benchmarks/models/vlmodel_vs_torch.sh [BUILD_DIR] [PYTHON]
#
# BUILD_DIR holds a Release build with benchmarks (default: build); PYTHON has
# torch, timm and transformers (tools/requirements.txt; default: python3).
# Environment: THREADS (default: all cores), ITERS (default 3), LEN (tokens per
# text, default 100: the tokenizer's max_length), CASES (default
# small:8x128x96,full:1x256x192), each CONFIG:BATCHxHEIGHTxWIDTH with CONFIG
# small (VLModelConfig::small()) or full (ConvNeXt-S + BERT-base + one fusion
# block, the paper's model). The paper's images are 1024x768 (CASES=full:1x1024x768);
# that is 16 times the pixels of the default and takes minutes per step on two cores.
# DEVICE (cpu, cuda, cuda:N; default cpu) and PRECISION (fp32, bf16, fp16; default fp32)
# run both sides on a GPU or in autocast (a build with the CUDA backend), e.g.
#   DEVICE=cuda PRECISION=bf16 CASES=full:8x1024x768 benchmarks/models/vlmodel_vs_torch.sh build-gpu
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build}"
python="${2:-python3}"
threads="${THREADS:-$(nproc)}"
cases="${CASES:-small:8x128x96,full:1x256x192}"
iters="${ITERS:-3}"
len="${LEN:-100}"
device="${DEVICE:-cpu}"
precision="${PRECISION:-fp32}"

bench="$build/benchmarks/bench_vlmodel"
[ -x "$bench" ] || { echo "vlmodel_vs_torch: $bench not found; build it: ninja -C $build bench_vlmodel" >&2; exit 1; }

# One case at a time, ours then theirs, so that load from other processes drifts less between
# the two sides of a row; min is the less load-sensitive of the two statistics.
rows=()
IFS=',' read -r -a specs <<<"$cases"
for spec in "${specs[@]}"; do
  a="$(OMP_NUM_THREADS=$threads "$bench" --cases "$spec" --iters "$iters" --len "$len" --device "$device" \
       --precision "$precision")"
  b="$("$python" "$here/vlmodel_torch.py" --threads "$threads" --cases "$spec" --iters "$iters" --len "$len" \
       --device "$device" --precision "$precision")"
  echo "$a"
  echo "$b"
  rows+=("$a"$'\t'"$b")
done
echo
printf '%-32s %9s %9s %11s %11s %7s %11s %11s %7s\n' "case" "loss ours" "loss pt" "median ours" "median pt" \
  "ratio" "min ours" "min pt" "ratio"
num() { sed -E "s/.*$1 ([^ ]+) .*/\1/" <<<"$2"; }
for row in "${rows[@]}"; do
  IFS=$'\t' read -r a b <<<"$row"
  key="$(sed -E 's/.* vlmodel (.*) (threads|device)=.*/\1/' <<<"$a")"
  ma="$(num median "$a")" mb="$(num median "$b")" na="$(num min "$a")" nb="$(num min "$b")"
  printf '%-32s %9s %9s %11s %11s %7s %11s %11s %7s\n' "$key" "$(num loss "$a")" "$(num loss "$b")" "$ma" "$mb" \
    "$(awk -v x="$ma" -v y="$mb" 'BEGIN { printf "%.2f", x / y }')" "$na" "$nb" \
    "$(awk -v x="$na" -v y="$nb" 'BEGIN { printf "%.2f", x / y }')"
done
