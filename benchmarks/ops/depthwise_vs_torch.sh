#!/usr/bin/env bash
# Depthwise 7x7 convolution (ConvNeXt's block conv) on the CPU: mamclip
# (bench_depthwise) against PyTorch's F.conv2d with groups = C
# (depthwise_torch.py) at the same shapes and thread count, side by side. The
# mamclip program also prints (stderr) its direct depthwise kernel against its
# im2col + GEMM path.
#
#   benchmarks/ops/depthwise_vs_torch.sh [BUILD_DIR] [PYTHON]
#
# BUILD_DIR holds a Release build with benchmarks (default: build); PYTHON has
# torch (tools/requirements.txt; default: python3). Threads: THREADS (default:
# all cores) for both. CASES (NxCxHxW, comma-separated) and ITERS override the
# defaults.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build}"
python="${2:-python3}"
threads="${THREADS:-$(nproc)}"
cases="${CASES:-1x96x56x56,1x384x14x14,1x96x256x192}"
iters="${ITERS:-20}"

bench="$build/benchmarks/bench_depthwise"
[ -x "$bench" ] || { echo "depthwise_vs_torch: $bench not found; build it: ninja -C $build bench_depthwise" >&2; exit 1; }

ours="$(OMP_NUM_THREADS=$threads "$bench" --cases "$cases" --iters "$iters")"
theirs="$("$python" "$here/depthwise_torch.py" --threads "$threads" --cases "$cases" --iters "$iters")"
echo "$ours"
echo "$theirs"
echo
printf '%-26s %12s %12s %8s %14s %14s %8s\n' "case (threads=$threads)" "fwd ours" "fwd torch" "ratio" "fwd+bwd ours" "fwd+bwd torch" "ratio"
paste <(echo "$ours") <(echo "$theirs") | while IFS=$'\t' read -r a b; do
  key="$(sed -E 's/.*(N=[0-9]+ C=[0-9]+ H=[0-9]+ W=[0-9]+).*/\1/' <<<"$a")"
  fa="$(sed -E 's/.*fwd median ([0-9.]+) ms.*fwd\+bwd.*/\1/' <<<"$a")"
  fb="$(sed -E 's/.*fwd median ([0-9.]+) ms.*fwd\+bwd.*/\1/' <<<"$b")"
  ba="$(sed -E 's/.*fwd\+bwd median ([0-9.]+) ms.*/\1/' <<<"$a")"
  bb="$(sed -E 's/.*fwd\+bwd median ([0-9.]+) ms.*/\1/' <<<"$b")"
  ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }'; }
  printf '%-26s %12s %12s %8s %14s %14s %8s\n' "$key" "$fa" "$fb" "$(ratio "$fa" "$fb")" "$ba" "$bb" "$(ratio "$ba" "$bb")"
done
echo "(times in ms, medians; ratio = ours / torch, below 1 is faster)"
