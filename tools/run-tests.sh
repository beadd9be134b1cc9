#!/usr/bin/env bash
# Builds qlm and runs its whole test suite with a CMake preset (release by default; asan, debug).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
bash tools/install-deps.sh --tests
jobs="$(nproc)"
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$jobs"
ctest --preset "$preset" -j "$jobs"
