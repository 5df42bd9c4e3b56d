#!/usr/bin/env bash
# The CUDA check for a machine with a GPU, sized for a short rental: configure
# and build with the CUDA backend, then, inside a time budget and most
# valuable first, every CUDA test's GPU cases, the kernel benchmarks (each
# against its baseline), the PyTorch comparisons, compute-sanitizer's
# racecheck on the tiled kernels' small "[race]" cases and memcheck on the
# GPU cases. Every step has a time cap; a step that fails or runs out of time
# is recorded and the next one runs. The summary table grows as steps end
# (summary.txt), so a run stopped from outside still leaves what it finished.
#
#   benchmarks/gpu_check.sh [OUT_DIR]     # OUT_DIR: gpu_check.log, summary.txt, each benchmark's
#                                         # output (NAME.txt) and attention_vs_torch.txt (ours vs
#                                         # PyTorch SDPA, also printed before the summary)
#                                         # (default: $OUT if set, else the build dir)
# Environment:
#   BUILD_DIR                   build folder (default build-gpu in the checkout; kept, so a rerun
#                               rebuilds only what changed)
#   GPU_CHECK_BUDGET_S          seconds for the whole script (default 480); a step that would start
#                               with less than 20 s, or a third of its cap, left is "no time"
#   MAMCLIP_CUDA_ARCHITECTURES  default: the GPU's compute capability from nvidia-smi
#   GPU_CHECK_STEPS             space-separated step groups to run (default: all of
#                               "tests bench torch race memcheck")
#   GPU_CHECK_TESTS             ctest -R regex of the test step (default "_gpu$|^test_dist_nccl":
#                               every GPU entry; e.g. "test_attention_cuda_gpu" to rerun one)
#   CONVNEXT_CASES, VLMODEL_CASES  the model-step cases (defaults: the issues' 1024 x 768, batch 8)
#   GPU_CHECK_CMAKE_ARGS        more configure arguments (split at spaces)
#
# Dependencies: a machine without Eigen, nlohmann-json, Catch2, utf8proc and stb
# (and without network to install them) builds against build-deps/ in the
# checkout: run scripts/bundle_deps.sh on a Debian machine first and copy the
# folder along. cuDNN and NCCL are taken from the CUDA toolkit, else from
# PyTorch's Python wheels (nvidia.cudnn, nvidia.nccl) when python3 has them.
#
# Exit status: 0 when everything ran and passed; 1 a build, test or benchmark
# failed or ran out of time; else 2 the GPU tests were skipped (no device
# visible); else 3 a sanitizer found something.
#
# Kernel work extends it: a new test under tests/cuda/ is picked up by its file
# name; a GPU benchmark goes into BENCH_TARGETS and gets a `bench` line below.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
out=${1:-${OUT:-$build}}
budget=${GPU_CHECK_BUDGET_S:-480}
steps=" ${GPU_CHECK_STEPS:-tests bench torch race memcheck} "
jobs=${JOBS:-$(nproc)}
mkdir -p "$build" "$out"
# Everything printed also goes to OUT_DIR/gpu_check.log (the script runs itself once more, piped).
if [[ -z ${GPU_CHECK_LOGGED:-} ]]; then
  GPU_CHECK_LOGGED=1 "$BASH" "${BASH_SOURCE[0]}" "$@" 2>&1 | tee "$out/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
deadline=$((SECONDS + budget))
summary=$out/summary.txt
printf '%-34s %-10s %8s  %s\n' step result seconds note >"$summary"

# Benchmarks built when they are targets of this build (bench_conv needs cuDNN).
BENCH_TARGETS=(bench_clip_loss bench_attention bench_conv bench_bandwidth bench_linear bench_graph bench_convnext bench_vlmodel)

failed=0          # a build, test or benchmark step failed or ran out of time
sanitizer_failed=0
row() { printf '%-34s %-10s %8s  %s\n' "$1" "$2" "$3" "${4:-}" >>"$summary"; }

# Output line by line, so that a step stopped at its cap leaves what it printed.
export PYTHONUNBUFFERED=1
linebuf=()
command -v stdbuf >/dev/null && linebuf=(stdbuf -oL -eL)

# step NAME CAP_S COMMAND...: runs COMMAND under a time cap (the smaller of CAP_S and what the
# budget has left), records the result. Returns the command's status (124 when out of time).
# A step is not started with less than 20 s, or less than a third of its cap, left.
step() {
  local name=$1 cap=$2 left t0 rc
  shift 2
  left=$((deadline - SECONDS))
  if ((left < 20 || left < cap / 3)); then
    row "$name" "no time" 0 "${left} s of the ${budget} s budget left"
    failed=1
    return 124
  fi
  ((cap > left)) && cap=$left
  echo
  echo "== $name (at most ${cap} s)"
  t0=$SECONDS
  timeout -k 10 "$cap" "${linebuf[@]}" "$@"
  rc=$?
  case $rc in
    0) row "$name" passed $((SECONDS - t0)) ;;
    124 | 137) row "$name" TIMEOUT $((SECONDS - t0)) "cap ${cap} s"; failed=1 ;;
    *) row "$name" FAILED $((SECONDS - t0)) "exit $rc"; failed=1 ;;
  esac
  return $rc
}
want() { [[ $steps == *" $1 "* ]]; }

echo "== device"
if command -v nvidia-smi >/dev/null; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | head -n 1)
else
  gpu="nvidia-smi not found"
fi
echo "$gpu"
nvcc_version=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo "nvcc not found")
echo "nvcc $nvcc_version; $(c++ --version 2>/dev/null | head -n 1)"
row device "" 0 "$gpu; nvcc $nvcc_version"

# Compile for the GPU at hand only (one architecture builds twice as fast).
arch=${MAMCLIP_CUDA_ARCHITECTURES:-}
if [[ -z $arch ]] && command -v nvidia-smi >/dev/null; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
fi
[[ -z $arch || $arch =~ ^[0-9]+[a-z]?(\;[0-9]+[a-z]?)*$ || $arch == native ]] \
  || { echo "architectures: '$arch' is not a CUDA architecture list; using 90"; arch=90; }
arch=${arch:-80;90}
echo "architectures: $arch"

# Where the machine lacks the Debian packages: the bundle from scripts/bundle_deps.sh.
prefix_path=()
if [[ -d $root/build-deps/include ]]; then
  prefix_path=("-DCMAKE_PREFIX_PATH=$root/build-deps")
  echo "dependencies: $root/build-deps ($(sed 1d "$root/build-deps/PACKAGES" 2>/dev/null | paste -sd, -))"
fi
# cuDNN and NCCL from PyTorch's wheels when the toolkit has no library of them (the wheels'
# libraries carry only versioned names, which cmake/cudnn.cmake and cmake/nccl.cmake look for too).
wheel_roots=()
toolkit=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/..
for lib in cudnn nccl; do
  compgen -G "$toolkit/lib*/lib$lib.so*" >/dev/null || compgen -G "$toolkit/targets/*/lib/lib$lib.so*" >/dev/null \
    || compgen -G "/usr/lib/x86_64-linux-gnu/lib$lib.so*" >/dev/null && continue
  dir=$(timeout 60 python3 -c "import nvidia.$lib as m; print(list(m.__path__)[0])" 2>/dev/null) || continue
  [[ -e $dir/include/$lib.h ]] && compgen -G "$dir/lib/lib$lib.so*" >/dev/null || continue
  echo "$lib: $dir (Python wheel)"
  wheel_roots+=("-D${lib^^}_ROOT=$dir")
  export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # for what they dlopen
done

generator=()
keep_going=()
if command -v ninja >/dev/null; then generator=(-G Ninja); keep_going=(-- -k 0); else keep_going=(-- -k); fi

if ! step configure 120 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DMAMCLIP_WITH_CUDA=ON "-DMAMCLIP_CUDA_ARCHITECTURES=$arch" -DMAMCLIP_BUILD_EXAMPLES=OFF \
    -DMAMCLIP_BUILD_BENCHMARKS=ON "${prefix_path[@]}" "${wheel_roots[@]}" ${GPU_CHECK_CMAKE_ARGS:-}; then
  echo "configure failed: nothing else can run"
  cat "$summary"
  exit 1
fi
grep -E "^(MAMCLIP_CUDNN_LIBRARY|MAMCLIP_NCCL_LIBRARY|CMAKE_CXX_COMPILER|Eigen3_DIR):" "$build/CMakeCache.txt" || true

# Test executables are named after their sources in tests/cuda/.
tests=()
for src in "$root"/tests/cuda/*.cpp "$root"/tests/cuda/*.cu; do
  [[ -e $src ]] && tests+=("$(basename "${src%.*}")")
done
available=$(cmake --build "$build" --target help 2>/dev/null || true)
# (test_train_cuda exists only when stb was found; an unknown target would stop the whole build.)
all_tests=("${tests[@]}")
tests=()
for t in "${all_tests[@]}"; do
  if grep -qw "$t" <<<"$available"; then tests+=("$t"); else echo "($t is not a target of this build: not built)"; fi
done
benches=()
for t in "${BENCH_TARGETS[@]}"; do
  if grep -qw "$t" <<<"$available"; then benches+=("$t"); else echo "($t is not a target of this build: not built)"; fi
done
# test_dist_nccl (tests/dist, label cuda) exists when MPI and NCCL were found.
dist=()
grep -qw test_dist_nccl <<<"$available" && dist=(test_dist_nccl)
# A target that fails to compile does not stop the others (keep going); what was built runs.
step build 300 cmake --build "$build" -j "$jobs" --target mamclip_cuda "${tests[@]}" "${dist[@]}" "${benches[@]}" \
  "${keep_going[@]}"
for t in "${tests[@]}"; do [[ -x $build/tests/cuda/$t ]] || row "build $t" MISSING 0; done
for t in "${benches[@]}"; do [[ -x $build/benchmarks/$t ]] || row "build $t" MISSING 0; done

skipped=0
if want tests; then
  # The GPU cases only (the "_gpu" entries; the host cases ran on CPU machines) and the NCCL
  # data-parallel tests when they were built. Several programs at
  # once: each is mostly waiting on its CPU reference, so they share the cores.
  test_regex=${GPU_CHECK_TESTS:-_gpu\$|^test_dist_nccl}
  rm -f "$build/gpu_check.ctest.log"
  OMP_NUM_THREADS=$(((jobs + 3) / 4)) step "GPU tests (ctest)" 150 \
    ctest --test-dir "$build" -L cuda -R "$test_regex" -j 4 --timeout 120 --output-on-failure \
    --output-log "$build/gpu_check.ctest.log"
  # ctest lines look like: " 1/2 Test #13: test_cuda_backend_gpu ....   Passed    0.52 sec"
  if [[ -f $build/gpu_check.ctest.log ]]; then
    awk '/Test +#[0-9]+:/ {
           name = $4; sub(/ .*/, "", name);
           res = ($0 ~ /Passed/) ? "passed" : ($0 ~ /Skipped|Not Run/) ? "SKIPPED" : ($0 ~ /Timeout/) ? "TIMEOUT" : "FAILED";
           printf "  %-32s %-10s %8s\n", name, res, $(NF - 1)
         }' "$build/gpu_check.ctest.log" >>"$summary"
    # Skipped = the test found no device ("Not Run" is a missing executable: a failure). test_dist_nccl_np2
    # needs two GPUs and skips, saying so, on one.
    grep -E "Test +#[0-9]+:.*Skipped" "$build/gpu_check.ctest.log" | grep -qv "test_dist_nccl_np2" && skipped=1
    grep -qE "Test +#[0-9]+:.*Not Run" "$build/gpu_check.ctest.log" && failed=1
  fi
fi

bench() {  # bench NAME CAP [ARGS...]: one benchmark program of the build; its output also in OUT_DIR/NAME.txt
  local name=$1 cap=$2
  shift 2
  [[ -x $build/benchmarks/$name ]] || return 0
  step "$name" "$cap" "$BASH" -c '"$@" | tee "$0"; exit "${PIPESTATUS[0]}"' "$out/$name.txt" \
    "$build/benchmarks/$name" "$@"
}
if want bench; then
  # Issue order: the fused contrastive loss, the fused attention, the convolutions, then the rest.
  bench bench_clip_loss 75       # fused CLIP loss vs cuBLAS + kernels on the logits matrix
  bench bench_attention 60       # fused attention vs cuBLAS + softmax on the scores
  bench bench_conv 75            # depthwise NHWC / NCHW vs cuDNN; patchify convs cuDNN vs im2col, NHWC vs NCHW
  bench bench_bandwidth 40       # elementwise, layer_norm, softmax, sum vs the device-to-device copy
  bench bench_linear 40          # cuBLASLt bias / bias-gradient epilogues vs bias copy + GEMM + sum
  bench bench_graph 40           # BERT forward + backward: one CUDA graph replay vs eager launches
fi

if want torch && ((deadline - SECONDS >= 40)); then
  # Which baselines python3 can run, in one probe: "torch timm transformers" or a prefix of it.
  python_has=$(timeout 60 python3 -c '
import importlib
have = []
try:
    import torch
    assert torch.cuda.is_available()
    have.append("torch")
    for name in ("timm", "transformers"):
        importlib.import_module(name)
        have.append(name)
except Exception:
    pass
print(" ".join(have))' 2>/dev/null || true)
  echo "python3 baselines: ${python_has:-none}"
  if [[ " $python_has " == *" torch "* ]]; then
    step "attention_torch.py (SDPA)" 60 "$BASH" -c '"$@" | tee "$0"; exit "${PIPESTATUS[0]}"' \
      "$out/attention_torch.txt" python3 "$root/benchmarks/ops/attention_torch.py"
    # Ours against SDPA from the two saved outputs (nothing runs again): the issue's ratio table.
    if [[ -s $out/bench_attention.txt && -s $out/attention_torch.txt ]]; then
      OURS_FILE=$out/bench_attention.txt THEIRS_FILE=$out/attention_torch.txt \
        "$BASH" "$root/benchmarks/ops/attention_vs_torch.sh" "$build" >"$out/attention_vs_torch.txt" 2>&1 || true
    fi
  else
    row "attention_torch.py (SDPA)" "not run" 0 "PyTorch with CUDA not importable"
  fi
  # The ConvNeXt-S training step (batch 8, 1024 x 768, bf16 autocast), against timm (channels_last,
  # autocast) when it imports; then a MAM-CLIP pretraining step (ConvNeXt-S + BERT-base + fusion)
  # against PyTorch + timm + transformers.
  convnext_cases=${CONVNEXT_CASES:-train:8x1024x768}
  if [[ " $python_has " == *" timm "* ]]; then
    DEVICE=cuda PRECISION=bf16 MODEL=convnext_small CASES=$convnext_cases ITERS=5 ROUNDS=1 \
      step "ConvNeXt-S step vs timm" 120 "$root/benchmarks/models/convnext_vs_torch.sh" "$build" python3
  elif [[ -x $build/benchmarks/bench_convnext ]]; then
    step "ConvNeXt-S step (no timm)" 90 "$build/benchmarks/bench_convnext" --model convnext_small \
      --device cuda --precision bf16 --cases "$convnext_cases" --iters 5
  fi
  step_cases=${VLMODEL_CASES:-full:8x1024x768}
  if [[ " $python_has " == *" transformers "* ]]; then
    DEVICE=cuda PRECISION=bf16 CASES=$step_cases ITERS=5 \
      step "MAM-CLIP step vs PyTorch" 120 "$root/benchmarks/models/vlmodel_vs_torch.sh" "$build" python3
  elif [[ -x $build/benchmarks/bench_vlmodel ]]; then
    step "MAM-CLIP step (no PyTorch)" 90 "$build/benchmarks/bench_vlmodel" --device cuda --precision bf16 \
      --cases "$step_cases" --iters 5
  fi
fi

# compute-sanitizer: sanitize TOOL FILTER CAP TEST... runs each test's FILTER cases under TOOL.
sanitizer=$(command -v compute-sanitizer || true)
[[ -z $sanitizer && -x /usr/local/cuda/bin/compute-sanitizer ]] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
sanitizer_usable=1
sanitize() {
  local tool=$1 filter=$2 cap=$3 t exe rc log before
  shift 3
  for t in "$@"; do
    exe=$build/tests/cuda/$t
    [[ -x $exe && $sanitizer_usable -eq 1 ]] || continue
    log=$build/gpu_check.$tool.$t.log
    rm -f "$log"
    # A finding is exit 99 (the tool's report in $log); the step's own failure flag is for tests
    # and benchmarks (a test failing under the tool shows in the tests step as well).
    before=$failed
    step "$tool $t" "$cap" "$sanitizer" --tool "$tool" --error-exitcode 99 --log-file "$log" "$exe" "$filter"
    rc=$?
    failed=$before
    [[ -f $log ]] && ((rc != 0)) && tail -n 30 "$log"
    if [[ -f $log ]] && grep -q "Device not supported\|Target application terminated before first instrumented API call" "$log"; then
      row "$tool" "not run" 0 "compute-sanitizer cannot instrument this device (see $log)"
      sanitizer_usable=0
    fi
    ((rc == 99)) && sanitizer_failed=1
  done
}
if want race || want memcheck; then
  if [[ -z $sanitizer ]]; then
    row compute-sanitizer "not run" 0 "not found: racecheck and memcheck not run"
  else
    # racecheck (shared-memory hazards between threads) on the small "[race]" cases of the kernels
    # that stage tiles through shared memory: the fused attention (cp.async pipeline) and the fused
    # contrastive loss (tensor-core accumulation).
    want race && sanitize racecheck "[race]" 90 test_attention_cuda test_clip_loss_cuda
    # memcheck (out-of-bounds and misaligned accesses; leaks of device memory are not checked: the
    # caching allocator keeps blocks by design) on the GPU cases, the hand-written tiled kernels first.
    if want memcheck; then
      first=(test_attention_cuda test_clip_loss_cuda test_conv_cuda test_norm_cuda test_softmax_cuda test_loss_cuda)
      rest=()
      for t in "${tests[@]}"; do [[ " ${first[*]} " == *" $t "* ]] || rest+=("$t"); done
      sanitize memcheck "[gpu]" 60 "${first[@]}" "${rest[@]}"
    fi
  fi
fi

echo
if [[ -s $out/attention_vs_torch.txt ]]; then
  echo "== attention: ours vs PyTorch SDPA (from bench_attention.txt and attention_torch.txt)"
  sed -n '/^shape /,$p' "$out/attention_vs_torch.txt"
  echo
fi
echo "== summary ($gpu; budget ${budget} s, used $((budget - deadline + SECONDS)) s)"
cat "$summary"
((failed)) && exit 1
if ((skipped)); then
  echo "GPU tests were skipped: no CUDA device was visible to them"
  exit 2
fi
((sanitizer_failed)) && exit 3
exit 0
