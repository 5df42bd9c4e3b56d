#!/usr/bin/env bash
# Fused attention on CUDA: mamclip (bench_attention, which also times the
# unfused cuBLAS + softmax path) against PyTorch's scaled_dot_product_attention
# with its flash and cuDNN backends (attention_torch.py) on the same GPU,
# bfloat16, at the same shapes; then one table of the ratios.
#
#   benchmarks/ops/attention_vs_torch.sh [BUILD_DIR] [PYTHON]
#
# BUILD_DIR holds a CUDA build with benchmarks (default: build-gpu); PYTHON
# has torch with CUDA (default: python3). OURS_FILE / THEIRS_FILE: saved
# outputs of the two programs to tabulate instead of running them
# (gpu_check.sh does that).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build-gpu}"
python="${2:-python3}"
bench="$build/benchmarks/bench_attention"
if [[ -n ${OURS_FILE:-} ]]; then
  ours="$(cat "$OURS_FILE")"
else
  [ -x "$bench" ] || { echo "attention_vs_torch: $bench not found; build it: cmake --build $build --target bench_attention" >&2; exit 1; }
  ours="$("$bench")"
fi
if [[ -n ${THEIRS_FILE:-} ]]; then theirs="$(cat "$THEIRS_FILE")"; else theirs="$("$python" "$here/attention_torch.py")"; fi
echo "$ours"
echo "$theirs"
echo
printf '%-14s %10s %10s %10s %8s %8s | %10s %10s %10s %8s %8s\n' "shape" "fwd ours" "flash" "cudnn" "/flash" "/cudnn" \
  "f+b ours" "flash" "cudnn" "/flash" "/cudnn"
grep -E '^L=.*fwd ours' <<<"$ours" | while read -r line; do
  key="$(sed -E 's/^(L=[0-9]+ +D=[0-9]+).*/\1/' <<<"$line" | tr -s ' ')"
  f="$(sed -E 's/.*fwd ours +([0-9.]+) ms.*/\1/' <<<"$line")"
  fb="$(sed -E 's/.*fwd\+bwd ours +([0-9.]+) ms.*/\1/' <<<"$line")"
  pick() { grep -E "^$(sed 's/ /  */' <<<"$key") +$1 fwd" <<<"$theirs" | sed -E "s/.* fwd ([0-9.]+) ms fwd\+bwd ([0-9.]+) ms/\\$2/" || true; }
  ff="$(pick flash 1)"; fc="$(pick cudnn 1)"; bf="$(pick flash 2)"; bc="$(pick cudnn 2)"
  ratio() { [ -n "$2" ] && awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }' || echo "-"; }
  printf '%-14s %10s %10s %10s %8s %8s | %10s %10s %10s %8s %8s\n' "$key" "$f" "${ff:--}" "${fc:--}" "$(ratio "$f" "$ff")" \
    "$(ratio "$f" "$fc")" "$fb" "${bf:--}" "${bc:--}" "$(ratio "$fb" "$bf")" "$(ratio "$fb" "$bc")"
done
echo "(ms, best of the timed runs; ratio = ours / torch: below 1 is faster)"
