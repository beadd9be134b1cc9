#!/usr/bin/env bash
# Renders deploy/k8s (base and overlays) with `kubectl kustomize`, lints sources and output with
# yamllint, and checks the rendered objects with check_k8s.py. No cluster needed.
#   bash tests/deploy/test_k8s.sh            (KUBECTL=/path/to/kubectl to pick another kubectl)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kubectl="${KUBECTL:-kubectl}"
command -v "$kubectl" >/dev/null || { echo "test_k8s: kubectl not found (Debian: kubernetes-client)" >&2; exit 1; }
command -v yamllint >/dev/null || { echo "test_k8s: yamllint not found (Debian: yamllint)" >&2; exit 1; }
# check_k8s.py needs PyYAML: Debian's python3 has it with python3-yaml (a yamllint dependency).
python=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import yaml' 2>/dev/null; then python="$candidate"; break; fi
done
[ -n "$python" ] || { echo "test_k8s: no python3 with PyYAML (Debian: python3-yaml)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

yamllint -s -c "$repo/deploy/.yamllint" "$repo/deploy"
echo "yamllint: deploy/ sources OK"
declare -A replicas=([base]=3 [overlays/production]=6)
for variant in base overlays/production; do
  rendered="$out/$(echo "$variant" | tr / -).yaml"
  # kustomize v5 warns on stderr about fields it deprecates (kept for kubectl 1.20's kustomize v2).
  "$kubectl" kustomize "$repo/deploy/k8s/$variant" > "$rendered" 2> "$out/stderr" \
    || { cat "$out/stderr" >&2; echo "test_k8s: kubectl kustomize deploy/k8s/$variant failed" >&2; exit 1; }
  yamllint -s -c "$repo/deploy/.yamllint" "$rendered"
  "$python" "$here/check_k8s.py" "$rendered" --replicas "${replicas[$variant]}"
done
