#!/usr/bin/env bash
# Builds and runs every test, as CI does (.ci/run calls this script):
#   1. build/       Release; the CUDA backend too when nvcc is found; all tests,
#                   the install consumers included
#   2. build-asan/  Debug with AddressSanitizer and UBSan, CPU only; all tests
#                   but the install consumers (they test packaging, not memory)
# Installs the Debian packages it needs first (scripts/install_deps.sh).
# JOBS (default 2) sets the build and test parallelism.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${JOBS:-2}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# Each phase's wall time and result are printed at the end. A failed phase
# skips the rest of its build dir, not the other one (a red Release run still
# gets its sanitizer run); the script fails if any phase failed.
timings=()
failed=()
phase() {
  local name=$1 start=$SECONDS status=ok
  shift
  echo "==> $name"
  "$@" || status=FAILED
  timings+=("$(printf '%-22s %5d s  %s' "$name" $((SECONDS - start)) "$status")")
  [ "$status" = ok ] || { failed+=("$name"); return 1; }
}

release() {
  phase "configure build" cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release &&
    phase "build build" cmake --build build -j "$jobs" &&
    phase "test build" ctest --test-dir build --output-on-failure -j "$jobs"
}

sanitized() {
  local flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  phase "configure build-asan" cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS=$flags" \
      -DMAMCLIP_WITH_CUDA=OFF -DMAMCLIP_BUILD_EXAMPLES=OFF -DMAMCLIP_BUILD_BENCHMARKS=OFF &&
    phase "build build-asan" cmake --build build-asan -j "$jobs" &&
    phase "test build-asan" ctest --test-dir build-asan --output-on-failure -j "$jobs" -E '^install_'
}

phase "install deps" bash scripts/install_deps.sh || exit 1
release || true
sanitized || true

echo "==> wall time per phase"
printf '  %s\n' "${timings[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: failed: ${failed[*]}" >&2
  exit 1
fi
