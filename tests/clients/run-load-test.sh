#!/usr/bin/env bash
# Starts qlm-serve on a free port of 127.0.0.1, runs tools/loadtest.mjs against it, and stops the
# server on every way out. The load test's exit status is this script's: non-zero on any failed or
# truncated request (or if the server dies under load).
# usage: run-load-test.sh QLM_SERVE_BINARY [qlm-serve options...] -- [loadtest.mjs options...]
# With EXPECT_FAILED=N in the environment it checks the load test itself instead: it must exit 1
# having counted exactly N failed requests (e.g. every request of a run without the API key).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 QLM_SERVE_BINARY [qlm-serve options...] -- [loadtest.mjs options...]" >&2
  exit 2
fi
server="$1"
shift
server_args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do server_args+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
here="$(cd "$(dirname "$0")" && pwd)"
loadtest="$here/../../tools/loadtest.mjs"
command -v node > /dev/null || { echo "run-load-test: 'node' is not installed (Debian package nodejs)" >&2; exit 1; }

tmp="$(mktemp -d)"
pid=""
cleanup() {
  [[ -n "${client:-}" ]] && kill -TERM "$client" 2> /dev/null || true
  if [[ -n "$pid" ]] && kill -0 "$pid" 2> /dev/null; then
    kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2> /dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

"$server" --port 0 "${server_args[@]}" > "$tmp/stdout" 2> "$tmp/stderr" &
pid=$!
port=""
for _ in $(seq 600); do  # 60 s for the model to load
  if ! kill -0 "$pid" 2> /dev/null; then
    echo "run-load-test: qlm-serve exited before listening:" >&2
    tail -20 "$tmp/stderr" >&2
    exit 1
  fi
  port="$(sed -n 's|^qlm-serve: listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$tmp/stdout")"
  [[ -n "$port" ]] && break
  sleep 0.1
done
if [[ -z "$port" ]]; then
  echo "run-load-test: qlm-serve printed no listening line within 60 s" >&2
  exit 1
fi

status=0
# In the background, so that a TERM to this script runs the cleanup at once, not after the client ends.
timeout 600 node "$loadtest" --url "http://127.0.0.1:$port" --json "$tmp/summary.json" "$@" &
client=$!
wait "$client" || status=$?
if [[ -n "${EXPECT_FAILED:-}" ]]; then
  failed="$(node -p "require('$tmp/summary.json').failed" 2> /dev/null || echo none)"
  if [[ "$status" == 1 && "$failed" == "$EXPECT_FAILED" ]]; then
    echo "run-load-test: as expected, exit status 1 with $failed failed requests"
    status=0
  else
    echo "run-load-test: expected exit status 1 with $EXPECT_FAILED failed requests, got status $status with $failed failed" >&2
    status=1
  fi
fi
if ! kill -0 "$pid" 2> /dev/null; then
  echo "run-load-test: qlm-serve died during the load test:" >&2
  tail -20 "$tmp/stderr" >&2
  status=1
fi
# The server's own account of the run (one JSON line a request on stderr): statuses other than 200.
if [[ -s "$tmp/stderr" ]]; then
  non_ok="$(grep -c '"status":[^2]' "$tmp/stderr" || true)"
  echo "qlm-serve logged $(grep -c '"endpoint"' "$tmp/stderr" || true) requests, $non_ok with a status other than 2xx"
fi
exit "$status"
