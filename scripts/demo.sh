#!/usr/bin/env bash
# The main job: builds the end-to-end example (target mamclip_train_demo, in
# the same build/ as scripts/test.sh) and runs it. Arguments go to the program.
# Installs the Debian packages it needs first (scripts/install_deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${JOBS:-2}
target=mamclip_train_demo

bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAMCLIP_BUILD_EXAMPLES=ON
# The executable's path inside build/, as ninja knows it (the phony target's input).
if ! query=$(ninja -C build -t query "$target" 2>/dev/null); then
  echo "demo: the build has no target $target (examples/CMakeLists.txt defines it)" >&2
  exit 1
fi
exe=build/$(awk '/input: phony/ { getline; print $1; exit }' <<<"$query")
cmake --build build -j "$jobs" --target "$target"
echo "==> $exe $*"
exec "$exe" "$@"
