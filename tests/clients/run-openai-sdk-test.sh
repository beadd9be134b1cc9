#!/usr/bin/env bash
# Installs the official OpenAI SDK (npm "openai", pinned by package.json / package-lock.json beside
# this script) into WORK_DIR with `npm ci`, never into the source tree, then runs
# test_openai_sdk.mjs against QLM_SERVE_BINARY. Exit status 77 (CTest's SKIP_RETURN_CODE) when the
# npm registry cannot be reached, with the reason; any other failure fails.
# usage: run-openai-sdk-test.sh QLM_SERVE_BINARY WORK_DIR [extra qlm-serve options...]
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 QLM_SERVE_BINARY WORK_DIR [qlm-serve options...]" >&2
  exit 2
fi
server="$(realpath "$1")"
work="$2"
shift 2
here="$(cd "$(dirname "$0")" && pwd)"
skip=77

for tool in node npm; do
  command -v "$tool" > /dev/null || { echo "run-openai-sdk-test: '$tool' is not installed (Debian packages nodejs, npm)" >&2; exit 1; }
done
mkdir -p "$work"
work="$(realpath "$work")"

# npm ci again only when the lockfile changed since the last install.
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [[ ! -f "$work/node_modules/openai/package.json" ]]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  log="$work/npm-ci.log"
  if ! timeout 300 npm ci --prefix "$work" --no-audit --no-fund --fetch-timeout=30000 --fetch-retries=1 > "$log" 2>&1; then
    if grep -Eq 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network|socket hang up|proxy' "$log"; then
      echo "run-openai-sdk-test: SKIPPED: npm cannot reach its registry ($(npm config get registry)) to install the openai SDK:" >&2
      grep -E 'npm error (code|errno|network|request)' "$log" | head -4 >&2
      exit "$skip"
    fi
    echo "run-openai-sdk-test: npm ci failed:" >&2
    cat "$log" >&2
    exit 1
  fi
fi
echo "openai SDK installed in $work"

# ESM resolves "openai" from the importing file's folder: the test runs from beside node_modules.
cp "$here/test_openai_sdk.mjs" "$work/test_openai_sdk.mjs"
exec timeout 170 node "$work/test_openai_sdk.mjs" "$server" "$@"
