#!/usr/bin/env bash
# BERT-base CPU forward: mamclip (bench_bert) against transformers + PyTorch
# (bert_torch.py) at the same shapes and thread count, side by side.
#
#   benchmarks/models/bert_vs_torch.sh [BUILD_DIR] [PYTHON]
#
# BUILD_DIR holds a Release build with benchmarks (default: build); PYTHON has
# torch and transformers (tools/requirements.txt; default: python3). Threads:
# THREADS (default: all cores) for both; ROUNDS (default 3) alternations, CASES
# and ITERS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build}"
python="${2:-python3}"
threads="${THREADS:-$(nproc)}"
cases="${CASES:-1x128,8x128}"
iters="${ITERS:-10}"
rounds="${ROUNDS:-3}"

source "$here/rounds.sh"

bench="$build/benchmarks/bench_bert"
[ -x "$bench" ] || { echo "bert_vs_torch: $bench not found; build it: ninja -C $build bench_bert" >&2; exit 1; }

run_rounds 'OMP_NUM_THREADS=$threads "$bench" --cases "$cases" --iters "$iters"' \
  '"$python" "$here/bert_torch.py" --threads "$threads" --cases "$cases" --iters "$iters"'
echo -n "$ours"
echo -n "$theirs"
echo
printf '%-22s %14s %14s %18s   (best median of %d rounds)\n' "case" "mamclip ms" "pytorch ms" "time ratio (ours/pt)" "$rounds"
paste <(best_medians "$ours") <(best_medians "$theirs") | while IFS=$'\t' read -r a b; do
  key="$(sed -E 's/.*(batch=[0-9]+ seq=[0-9]+).*/\1/' <<<"$a")"
  ma="$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$a")"
  mb="$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$b")"
  printf '%-22s %14s %14s %18s\n' "$key" "$ma" "$mb" "$(awk -v x="$ma" -v y="$mb" 'BEGIN { printf "%.2f", x / y }')"
done
