#!/usr/bin/env bash
# Installs the Debian 12 packages that building and testing mamclip needs.
# Safe to run again: apt is only touched when a package is missing.
set -euo pipefail

packages=(
  cmake ninja-build g++
  libeigen3-dev       # the CPU backend
  catch2              # tests
  nlohmann-json3-dev  # io/ (safetensors headers, config.json), test fixtures
  libstb-dev          # image loading
  libutf8proc-dev     # Unicode normalisation for the tokenizer
  libopenblas-dev     # optional BLAS matmul path and the GEMM benchmark baseline
  libyaml-cpp-dev     # the mamclip program reads the reference cfg.yaml config files
  libopenmpi-dev openmpi-bin  # data-parallel training (dist/mpi.hpp) and its multi-process tests
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_deps: missing ${missing[*]}, and apt-get is not available: install them with your package manager" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install_deps: missing ${missing[*]}; run as root or install sudo" >&2
    exit 1
  fi
fi

echo "install_deps: apt-get update"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
echo "install_deps: apt-get install ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
