#!/usr/bin/env bash
# Builds the libFuzzer targets fuzz/fuzz_<name>.cpp with clang++ (fuzzer +
# AddressSanitizer + UndefinedBehaviorSanitizer) and runs each for a while,
# starting from the seed files the tests use. Not part of the CMake build.
#
#   fuzz/run_fuzzers.sh [SECONDS_PER_TARGET=60] [TARGET...]     e.g. fuzz/run_fuzzers.sh 600 safetensors pickle
#
# Outputs under build/fuzz/ (or $MAMCLIP_FUZZ_OUT): the binaries, a growing
# corpus per target, crash reproducers in artifacts_<name>/ and a log per run.
# Reproduce a crash with: build/fuzz/fuzz_<name> build/fuzz/artifacts_<name>/crash-...
# Exits non-zero when any target crashed, leaked, timed out or failed to build.
set -euo pipefail

seconds=${1:-60}
shift || true
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${MAMCLIP_FUZZ_OUT:-$root/build/fuzz}
cxx=${MAMCLIP_FUZZ_CXX:-clang++}
mkdir -p "$out"

command -v "$cxx" >/dev/null || { echo "run_fuzzers: $cxx not found (apt-get install clang)" >&2; exit 2; }
eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo "-I/usr/include/eigen3")

# Seed files per target (directories are searched recursively).
seeds_for() {
  case "$1" in
    safetensors) echo "$root/tests/fixtures/safetensors" ;;
    pickle) echo "$root/tests/fixtures/torch" ;;
    tokenizer) echo "$root/tests/fixtures/cli" ;;
    image) echo "$root/tests/fixtures/image" ;;
    *) echo "" ;;
  esac
}

# Extra compiler/linker arguments per target (text/ needs utf8proc and reads the shared vocabularies).
extra_flags_for() {
  case "$1" in
    tokenizer) echo "-DMAMCLIP_SHARED_DATA=\"$root/../shared/data\" -lutf8proc" ;;
    # stb compiled into the target, instrumented. stb 2.27's JPEG bit reader shifts by
    # more than 31 on corrupt entropy data (garbage pixels, no out-of-bounds access; fixed
    # upstream in 2.28) and no check short of decoding can refuse such files first, so
    # that one check is off for this target; every other UBSan check stays fatal.
    # Likewise stb passes a null pointer with length 0 to memcpy for an empty IDAT chunk
    # (legal PNG; no byte is touched), so the nonnull-attribute check is off too.
    image) echo "-I/usr/include/stb -fno-sanitize=shift-exponent,nonnull-attribute" ;;
    *) echo "" ;;
  esac
}

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in "$root"/fuzz/fuzz_*.cpp; do
    n=$(basename "$f" .cpp)
    targets+=("${n#fuzz_}")
  done
fi

status=0
summary=()
for t in "${targets[@]}"; do
  src="$root/fuzz/fuzz_$t.cpp"
  bin="$out/fuzz_$t"
  [ -f "$src" ] || { echo "run_fuzzers: no $src" >&2; exit 2; }
  echo "== building fuzz_$t"
  # shellcheck disable=SC2086
  "$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -I"$root/include" $eigen "$src" $(extra_flags_for "$t") -o "$bin" || { status=1; summary+=("$t: build failed"); continue; }

  corpus="$out/corpus_$t"
  artifacts="$out/artifacts_$t/"
  mkdir -p "$corpus" "$artifacts"
  seed_dir=$(seeds_for "$t")
  if [ -n "$seed_dir" ] && [ -d "$seed_dir" ]; then
    find "$seed_dir" -type f -exec cp -n {} "$corpus/" \;
  fi
  dict=()
  [ -f "$root/fuzz/fuzz_$t.dict" ] && dict=(-dict="$root/fuzz/fuzz_$t.dict")
  before=$(find "$artifacts" -type f | wc -l)
  log="$out/fuzz_$t.log"
  echo "== running fuzz_$t for ${seconds}s (log: $log)"
  rc=0
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$bin" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts" "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  after=$(find "$artifacts" -type f | wc -l)
  crashes=$((after - before))
  corpus_n=$(find "$corpus" -type f | wc -l)
  summary+=("$t: ${execs} executions in ${seconds}s, ${crashes} crashes/leaks/timeouts, exit ${rc}, corpus ${corpus_n} files")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then status=1; tail -n 40 "$log"; fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
