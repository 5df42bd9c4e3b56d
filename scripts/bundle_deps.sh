#!/usr/bin/env bash
# Unpacks the Debian 12 packages that a build needs beyond a compiler, CMake
# and the CUDA toolkit (Eigen, nlohmann-json, Catch2, utf8proc, stb) into one
# install prefix, for a machine that has a CUDA toolkit but cannot install
# packages (no package manager or no network), e.g. a rented GPU machine.
# Run it where apt-get can download (root is not needed); copy the folder
# along with the checkout; benchmarks/gpu_check.sh uses it when it is there.
#
#   scripts/bundle_deps.sh               # -> build-deps/ in the checkout (ignored by git)
#   scripts/bundle_deps.sh /some/prefix
#   cmake -DCMAKE_PREFIX_PATH=$PWD/build-deps ...   # what a build does with it
#
# The prefix is flat (include/, lib/, share/: the multiarch lib folder is
# folded into lib/) and holds no pkg-config files, whose prefix=/usr would
# point a build at the host's folders. The packages are header-only or
# small C libraries, so they run on any x86-64 glibc >= Debian 12's (2.36).
# Safe to run again: the prefix is rebuilt from scratch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${1:-$root/build-deps}
packages=(libeigen3-dev nlohmann-json3-dev catch2 libutf8proc-dev libutf8proc2 libstb-dev libstb0)

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { echo "bundle_deps: needs apt-get and dpkg-deb (a Debian or Ubuntu machine)" >&2; exit 1; }
[[ $(dpkg --print-architecture) == amd64 ]] \
  || { echo "bundle_deps: this machine is $(dpkg --print-architecture); the bundle is for amd64 GPU machines" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "bundle_deps: downloading ${packages[*]}"
# apt-get download writes into the current folder; as root it warns that _apt cannot write there.
(cd "$work" && apt-get download -q "${packages[@]}" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
for p in "${packages[@]}"; do
  compgen -G "$work/${p}_*.deb" >/dev/null || { echo "bundle_deps: $p was not downloaded (apt-get update?)" >&2; exit 1; }
done

stage=$work/root
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$stage"; done
multiarch=$stage/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
if [[ -d $multiarch ]]; then
  cp -a "$multiarch"/. "$stage/usr/lib/"
  rm -rf "$multiarch"
fi
rm -rf "$stage/usr/share/doc" "$stage/usr/share/man" "$stage/usr/share/lintian"
find "$stage" -name '*.pc' -delete
find "$stage" -depth -type d -empty -delete

# Replace only an earlier bundle (or nothing): never a folder that holds something else.
if [[ -e $prefix && ! -f $prefix/PACKAGES ]] && [[ -n $(ls -A "$prefix" 2>/dev/null) ]]; then
  echo "bundle_deps: $prefix exists and is not a bundle made by this script: not replacing it" >&2
  exit 1
fi
rm -rf "$prefix"
mkdir -p "$(dirname "$prefix")"
mv "$stage/usr" "$prefix"
{
  echo "# Unpacked by scripts/bundle_deps.sh on $(date -u +%Y-%m-%dT%H:%MZ); an install prefix for CMAKE_PREFIX_PATH."
  for deb in "$work"/*.deb; do dpkg-deb --showformat='${Package} ${Version}\n' -W "$deb"; done
} >"$prefix/PACKAGES"
echo "bundle_deps: $prefix ($(du -sh "$prefix" | cut -f1)):"
sed 1d "$prefix/PACKAGES"
