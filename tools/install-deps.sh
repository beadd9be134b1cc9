#!/usr/bin/env bash
# Installs the Debian packages qlm needs to build and run its tools; with --tests, also what the
# test suite's real peers need (Python for the HTTP tests, Prometheus and promtool, nginx, yamllint,
# kubectl for kustomize, Node.js and npm for the OpenAI SDK and load tests). Only what is missing.
set -euo pipefail
packages=(cmake g++ make libxsimd-dev doctest-dev libbenchmark-dev nlohmann-json3-dev libcpp-httplib-dev pkg-config)
if [ "${1:-}" = "--tests" ]; then
  packages+=(python3 prometheus nginx yamllint)
  # kubectl (for `kubectl kustomize`) may come from elsewhere (Google Cloud SDK's package, which
  # Debian's kubernetes-client would conflict with): only install Debian's when there is none.
  command -v kubectl >/dev/null || packages+=(kubernetes-client)
  # Node.js may come from elsewhere (NodeSource): only install Debian's when there is none.
  command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "qlm: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  # policy-rc.d: the packages' own services (nginx on port 80, prometheus) are not started; the
  # tests start their own instances on free loopback ports.
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
