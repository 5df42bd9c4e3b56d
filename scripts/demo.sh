#!/usr/bin/env bash
# The main job: builds the mamclip program (target mamclip_cli, in the same
# build/ as scripts/test.sh) and runs `mamclip demo`, MAM-CLIP end to end:
# a synthetic mammogram-like image-caption set (or --data DIR, e.g.
# ../shared/data/mias), pretraining, fine-tuning with and without it at two
# label budgets, the macro-F1 table and plots in runs/demo. Arguments go to
# `mamclip demo` (see --help).
# Installs the Debian packages it needs first (scripts/install_deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${JOBS:-2}
target=mamclip_cli

bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAMCLIP_BUILD_EXAMPLES=ON
# The executable's path inside build/, as ninja knows it (the phony target's input).
if ! query=$(ninja -C build -t query "$target" 2>/dev/null); then
  echo "demo: the build has no target $target (examples/CMakeLists.txt defines it)" >&2
  exit 1
fi
exe=build/$(awk '/input: phony/ { getline; print $1; exit }' <<<"$query")
cmake --build build -j "$jobs" --target "$target"
echo "==> $exe demo $*"
exec "$exe" demo "$@"
