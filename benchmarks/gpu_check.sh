#!/usr/bin/env bash
# The CUDA check for a machine with a GPU: configure and build with the CUDA
# backend, run every CUDA test (CTest label "cuda"), their GPU cases again
# under compute-sanitizer memcheck (when the toolkit has it) and the small
# "[race]" cases of the tiled kernels under its racecheck, the kernel
# benchmarks, and print a short table. Logs stay in the build dir (gpu_check.*.log).
# Exits non-zero if a build step or a test fails, or if the GPU tests were
# skipped (no device found on a machine that is meant to have one).
#
#   benchmarks/gpu_check.sh                     # build dir build-gpu, arch from nvidia-smi
#   BUILD_DIR=/tmp/b MAMCLIP_CUDA_ARCHITECTURES=90 benchmarks/gpu_check.sh
#
# Kernel work extends it: a new test under tests/cuda/ is picked up by its
# file name; a GPU benchmark goes into EXTRA_TARGETS and extra_steps below.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
jobs=${JOBS:-$(nproc)}
# test_dist_nccl (tests/dist, label cuda) exists when MPI and NCCL were found.
EXTRA_TARGETS=(test_dist_nccl bench_clip_loss bench_attention bench_conv bench_bandwidth bench_linear bench_graph bench_convnext bench_vlmodel)

echo "== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
else
  echo "nvidia-smi not found"
fi
nvcc --version | tail -n 2 | head -n 1

# Compile for the GPU at hand only (one architecture builds twice as fast).
arch=${MAMCLIP_CUDA_ARCHITECTURES:-}
if [[ -z $arch ]] && command -v nvidia-smi >/dev/null; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
fi
arch=${arch:-80;90}
echo "architectures: $arch"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

echo "== configure"
mkdir -p "$build"
t0=$SECONDS
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMAMCLIP_WITH_CUDA=ON \
  "-DMAMCLIP_CUDA_ARCHITECTURES=$arch" -DMAMCLIP_BUILD_EXAMPLES=OFF -DMAMCLIP_BUILD_BENCHMARKS=ON >"$build/gpu_check.configure.log" 2>&1 \
  || { tail -n 40 "$build/gpu_check.configure.log"; exit 1; }
configure_s=$((SECONDS - t0))

# Test executables are named after their sources in tests/cuda/.
targets=(mamclip_cuda)
for src in "$root"/tests/cuda/*.cpp "$root"/tests/cuda/*.cu; do
  [[ -e $src ]] && targets+=("$(basename "${src%.*}")")
done
# Targets whose dependencies were not found (bench_conv needs cuDNN) are not targets: skip them.
available=$(cmake --build "$build" --target help 2>/dev/null || true)
for t in "${EXTRA_TARGETS[@]}"; do
  if grep -qw "$t" <<<"$available"; then targets+=("$t"); else echo "($t is not a target of this build: not built)"; fi
done

echo "== build: ${targets[*]}"
t0=$SECONDS
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
build_s=$((SECONDS - t0))

echo "== test"
t0=$SECONDS
set +e
ctest --test-dir "$build" -L cuda --output-on-failure >"$build/gpu_check.ctest.log" 2>&1
ctest_rc=$?
set -e
bench_rc=0
test_s=$((SECONDS - t0))
cat "$build/gpu_check.ctest.log"

# compute-sanitizer runs: sanitize TOOL FILTER TEST... runs each test's FILTER cases under TOOL and
# adds a row per test to the summary; a finding fails the script (exit 3) and prints the log's tail.
memcheck_rows=()
memcheck_rc=0
sanitizer=$(command -v compute-sanitizer || true)
[[ -z $sanitizer && -x /usr/local/cuda/bin/compute-sanitizer ]] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
sanitize() {
  local tool=$1 filter=$2 t exe log t0
  shift 2
  echo "== $tool"
  for t in "$@"; do
    exe="$build/tests/cuda/$t"
    [[ -x $exe ]] || continue
    log="$build/gpu_check.$tool.$t.log"
    t0=$SECONDS
    if "$sanitizer" --tool "$tool" --error-exitcode 99 "$exe" "$filter" >"$log" 2>&1; then
      memcheck_rows+=("$(printf '%-28s %-10s %8s' "$tool $t" passed $((SECONDS - t0)))")
    else
      memcheck_rc=1
      memcheck_rows+=("$(printf '%-28s %-10s %8s' "$tool $t" FAILED $((SECONDS - t0)))")
      tail -n 30 "$log"
    fi
  done
}
if [[ -n $sanitizer ]]; then
  # Every CUDA test's [gpu] cases under memcheck (out-of-bounds and misaligned accesses; leaks of
  # device memory are not checked: the caching allocator keeps blocks by design).
  sanitize memcheck "[gpu]" "${targets[@]}"
  # racecheck (shared-memory hazards between threads) on the small "[race]" cases of the kernels
  # that stage tiles through shared memory: the fused attention (cp.async pipeline) and the fused
  # contrastive loss (tensor-core accumulation).
  sanitize racecheck "[race]" test_attention_cuda test_clip_loss_cuda
else
  memcheck_rows+=("compute-sanitizer not found: memcheck and racecheck not run")
fi

# Hook for kernel work: benchmarks that validate against the CPU, then time.
extra_steps() {
  echo "== bench_clip_loss (fused CLIP loss vs cuBLAS + kernels on the logits matrix)"
  "$build/benchmarks/bench_clip_loss" || bench_rc=1
  echo "== bench_attention (fused attention vs cuBLAS + softmax on the scores)"
  "$build/benchmarks/bench_attention" || bench_rc=1
  echo "== bench_bandwidth (elementwise, layer_norm, softmax, sum vs the device-to-device copy)"
  "$build/benchmarks/bench_bandwidth" || bench_rc=1
  echo "== bench_linear (cuBLASLt bias / bias-gradient epilogues vs bias copy + GEMM + sum)"
  "$build/benchmarks/bench_linear" || bench_rc=1
  echo "== bench_graph (BERT forward + backward: one CUDA graph replay vs eager launches)"
  "$build/benchmarks/bench_graph" || bench_rc=1
  if [[ -x $build/benchmarks/bench_conv ]]; then
    echo "== bench_conv (depthwise 7x7, NHWC and NCHW: our kernels vs cuDNN at ConvNeXt's stage shapes; patchify convs: cuDNN vs im2col, NHWC vs NCHW)"
    "$build/benchmarks/bench_conv" || bench_rc=1
  fi
  if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== PyTorch scaled_dot_product_attention at the same shapes"
    python3 "$root/benchmarks/ops/attention_torch.py" || bench_rc=1
  else
    echo "(PyTorch with CUDA not importable: benchmarks/ops/attention_vs_torch.sh gives the side-by-side table where it is)"
  fi
  # The ConvNeXt-S training step of the conv issue (batch 8, 1024 x 768, bf16 autocast), against
  # timm (channels_last, autocast) when it imports.
  local convnext_cases=${CONVNEXT_CASES:-train:8x1024x768}
  if python3 -c "import torch, timm; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== ConvNeXt-S training step on the GPU: mamclip vs timm (convnext_vs_torch.sh)"
    DEVICE=cuda PRECISION=bf16 MODEL=convnext_small CASES=$convnext_cases ITERS=5 ROUNDS=1 \
      "$root/benchmarks/models/convnext_vs_torch.sh" "$build" python3 || bench_rc=1
  else
    echo "== ConvNeXt-S training step on the GPU (bench_convnext; timm not importable for the baseline)"
    "$build/benchmarks/bench_convnext" --model convnext_small --device cuda --precision bf16 \
      --cases "$convnext_cases" --iters 5 || bench_rc=1
  fi
  # A MAM-CLIP pretraining step (ConvNeXt-S + BERT-base + fusion, bf16 autocast) on the GPU,
  # at the paper's 1024 x 768 input; against PyTorch + timm + transformers when they import.
  local step_cases=${VLMODEL_CASES:-full:8x1024x768}
  if python3 -c "import torch, timm, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== pretraining step on the GPU: mamclip vs PyTorch (vlmodel_vs_torch.sh)"
    DEVICE=cuda PRECISION=bf16 CASES=$step_cases ITERS=5 "$root/benchmarks/models/vlmodel_vs_torch.sh" "$build" python3 \
      || bench_rc=1
  else
    echo "== pretraining step on the GPU (bench_vlmodel; PyTorch + timm + transformers not importable for the baseline)"
    "$build/benchmarks/bench_vlmodel" --device cuda --precision bf16 --cases "$step_cases" --iters 5 || bench_rc=1
  fi
}
extra_steps

echo
echo "== summary"
printf '%-28s %-10s %8s\n' "test" "result" "seconds"
# ctest lines look like: " 1/2 Test #13: test_cuda_backend ........   Passed    0.52 sec"
awk '/Test +#[0-9]+:/ {
       name = $4; sub(/ .*/, "", name);
       res = ($0 ~ /Passed/) ? "passed" : ($0 ~ /Skipped|Not Run/) ? "SKIPPED" : "FAILED";
       secs = $(NF - 1);
       printf "%-28s %-10s %8s\n", name, res, secs
     }' "$build/gpu_check.ctest.log"
printf '%s\n' "${memcheck_rows[@]}"
printf '%-28s %-10s %8s\n' "(configure)" "" "$configure_s"
printf '%-28s %-10s %8s\n' "(build)" "" "$build_s"
printf '%-28s %-10s %8s\n' "(tests)" "" "$test_s"

# test_dist_nccl_np2 needs two GPUs and skips, saying so, on one.
if grep "Skipped\|Not Run" "$build/gpu_check.ctest.log" | grep -qv "test_dist_nccl_np2"; then
  echo "GPU tests were skipped: no CUDA device was visible to them"
  exit 2
fi
[[ $ctest_rc -ne 0 ]] && exit "$ctest_rc"
[[ $memcheck_rc -ne 0 ]] && exit 3
exit "$bench_rc"
