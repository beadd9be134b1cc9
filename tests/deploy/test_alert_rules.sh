#!/usr/bin/env bash
# promtool on deploy/prometheus: the rules parse, their unit tests pass (each alert fires when it
# should and stays quiet when it should not), and the example prometheus.yml is a valid config.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../../deploy/prometheus" && pwd)"
command -v promtool >/dev/null || { echo "test_alert_rules: promtool not found (Debian: prometheus)" >&2; exit 1; }
cd "$dir"
promtool check rules alerts.yml
promtool test rules alerts_test.yml
promtool check config prometheus.yml
