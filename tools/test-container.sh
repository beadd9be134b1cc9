#!/usr/bin/env bash
# Builds deploy/Dockerfile with podman and runs the image: waits for /health, sends one completion,
# checks the user is not root and the image's HEALTHCHECK reports healthy, then stops the container
# with SIGTERM (qlm-serve drains and exits 0) and removes it. Slow (a from-source build in the image):
# not part of CI; run it by hand before a release or after touching deploy/Dockerfile.
#
#   bash tools/test-container.sh [SOURCE_DIR]      (SOURCE_DIR: the qlm tree to build, default this one)
#
# No container registry is reachable here, so the base image `debian:bookworm` is made locally with
# debootstrap (minbase, from the Debian mirror apt uses) and `podman import`; it is kept between runs
# (QLM_REBUILD_BASE=1 makes it again). podman runs with runc and explicit ulimits: crun fails on the
# hybrid cgroup layout of these machines.
# Needs (Debian): podman runc debootstrap uidmap fuse-overlayfs slirp4netns curl python3.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source_dir="$(cd "${1:-$repo}" && pwd)"
image="${QLM_IMAGE:-localhost/qlm-serve:test}"
base_image="debian:bookworm"
mirror="${QLM_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
podman_run_opts=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
container="qlm-serve-test-$$"
work="$(mktemp -d /var/tmp/qlm-container.XXXXXX)"
started=$SECONDS

step() { printf '[%4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { echo "test-container: FAIL: $*" >&2; exit 1; }
cleanup() {
  local rc=$?
  if podman container exists "$container" 2>/dev/null; then
    ((rc == 0)) || { echo "--- container log (last 40 lines) ---"; podman logs --tail 40 "$container" 2>&1 || true; }
    podman rm -f -t 2 "$container" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

for tool in podman runc debootstrap curl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install podman runc debootstrap uidmap fuse-overlayfs slirp4netns curl)"
done

# 1. The base image, made from scratch: debootstrap a minimal Debian 12 and import it.
if [ "${QLM_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$base_image"; then
  step "debootstrap --variant=minbase bookworm from $mirror"
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap failed"; }
  # The same mirror inside the image, and no leftover package cache.
  echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  step "podman import as $base_image"
  tar -C "$rootfs" -c . | podman import - "$base_image" >/dev/null
  rm -rf "$rootfs"
else
  step "base image $base_image already present (QLM_REBUILD_BASE=1 to remake it)"
fi

[ -f "$source_dir/examples/qlm-serve.cpp" ] || fail "$source_dir has no examples/qlm-serve.cpp"

# 2. The build context: only the files the Dockerfile copies, so a big build/ folder is not sent.
context="$work/context"
mkdir -p "$context/models"
cp -r "$source_dir"/{CMakeLists.txt,cmake,include,examples} "$context/"
cp -r "$source_dir/models/gpt2-tiny-kjv" "$context/models/"
rm -rf "$context/examples/build" "$context/examples/node_modules"
step "podman build -f deploy/Dockerfile (from $source_dir)"
build_started=$SECONDS
podman build --runtime runc "${podman_run_opts[@]:2}" --format docker --layers \
  -f "$repo/deploy/Dockerfile" -t "$image" "$context" > "$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; fail "podman build failed"; }
step "built $image in $((SECONDS - build_started)) s: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
sed -n 's/^runtime packages: /         runtime packages: /p' "$work/build.log" | head -n 1

# 3. Run it on a free loopback port.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
step "podman run -p 127.0.0.1:$port:8000"
# Without systemd podman cannot set up its health check timers and says so on stderr; step 5 runs the
# check by hand instead. Its other messages are shown.
podman run -d --name "$container" "${podman_run_opts[@]}" -p "127.0.0.1:$port:8000" "$image" \
  > /dev/null 2> "$work/run.log" || { cat "$work/run.log"; fail "podman run failed"; }
grep -v 'systemd connection' "$work/run.log" || true
base="http://127.0.0.1:$port"
deadline=$((SECONDS + 120))
until curl -fsS --max-time 2 "$base/health" >/dev/null 2>&1; do
  [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] || fail "the container exited"
  ((SECONDS < deadline)) || fail "/health did not answer within 120 s"
  sleep 0.5
done
step "/health: $(curl -fsS --max-time 5 "$base/health")"
curl -fsS --max-time 5 "$base/ready" >/dev/null || fail "/ready is not 200"

completion="$(curl -fsS --max-time 60 -H 'Content-Type: application/json' \
  -d '{"model": "gpt2-tiny-kjv", "prompt": "In the beginning", "max_tokens": 12, "temperature": 0, "seed": 1}' \
  "$base/v1/completions")" || fail "POST /v1/completions failed"
python3 - "$completion" <<'EOF' || fail "unexpected completion: $completion"
import json, sys
body = json.loads(sys.argv[1])
choice = body["choices"][0]
assert body["object"] == "text_completion", body
assert isinstance(choice["text"], str) and choice["text"], body
assert body["usage"]["completion_tokens"] > 0, body
print(f"         completion: {choice['text']!r} ({body['usage']['completion_tokens']} tokens, {choice['finish_reason']})")
EOF
metrics="$(curl -fsS --max-time 5 "$base/metrics")" || fail "GET /metrics failed"
grep -q '^qlm_generation_tokens_total [1-9]' <<< "$metrics" || fail "/metrics does not count the generated tokens"

# 4. Not root, inside and in the image's metadata.
uid="$(podman exec "$container" id -u)"
[ "$uid" != 0 ] || fail "the server runs as root"
step "user: uid $uid ($(podman inspect --format '{{.Config.User}}' "$container"))"

# 5. The image's own HEALTHCHECK (run now instead of waiting for its interval).
podman healthcheck run "$container" >/dev/null || fail "podman healthcheck run failed"
health="$(podman inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Healthcheck.Status}}{{end}}' "$container" 2>/dev/null || true)"
[ "$health" = healthy ] || fail "health status is '$health', expected healthy"
step "HEALTHCHECK: $health"

# 6. SIGTERM drains and exits 0 (podman stop sends the image's STOPSIGNAL, SIGKILL after 30 s).
stop_started=$SECONDS
podman stop -t 30 "$container" > /dev/null 2> "$work/stop.log" || { cat "$work/stop.log"; fail "podman stop failed"; }
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$container")"
[ "$exit_code" = 0 ] || fail "exit code after SIGTERM is $exit_code, expected 0"
step "stopped with SIGTERM in $((SECONDS - stop_started)) s, exit code $exit_code"
# One JSON log line per request on stderr: /health x2+, /ready, the completion, /metrics at least.
log_lines="$(podman logs "$container" 2>&1 | grep -c '^{.*"endpoint":' || true)"
((log_lines >= 5)) || fail "expected a JSON log line per request on stderr, found $log_lines"
echo "         JSON request log lines: $log_lines"
podman rm "$container" > /dev/null 2> "$work/rm.log" || { cat "$work/rm.log"; fail "podman rm failed"; }
step "test-container: OK ($((SECONDS - started)) s in all)"
