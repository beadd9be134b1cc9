#!/usr/bin/env bash
# Compiles every qlm test (-O2, -Werror, no sanitizers: see CMakePresets.json; the examples are compiled natively by the release
# stage, and compiling them again here would push CI past 45 minutes on 2 cores) for the x86 CPU
# class this machine is not, without running anything: an AVX2-only machine still catches what
# only an AVX-512 build shows (GCC 12's intrinsic false positives, target-attribute mismatches),
# and an AVX-512 machine what only an AVX2 build shows. Usage: tools/cross-isa-build.sh [avx512|avx2]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-}"
if [ -z "$target" ]; then
  if grep -qw avx512f /proc/cpuinfo; then target=avx2; else target=avx512; fi
fi
case "$target" in avx512|avx2) ;; *) echo "usage: $0 [avx512|avx2]" >&2; exit 2 ;; esac
bash tools/install-deps.sh
cmake --preset "cross-$target" >/dev/null
cmake --build --preset "cross-$target" -j "$(nproc)"
echo "qlm: every test compiles for $target (not run)"
