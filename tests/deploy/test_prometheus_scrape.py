"""A real Prometheus scrapes a real qlm-serve, both on 127.0.0.1, and the test reads qlm's metrics back
through Prometheus' HTTP API. The same Prometheus loads deploy/prometheus/alerts.yml and evaluates
every rule, and every query of the Grafana dashboard is run through it (so a PromQL syntax error in a
panel fails here).

    python3 test_prometheus_scrape.py --server build/release/examples/qlm-serve [--prometheus prometheus]
"""
import argparse
import json
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

from qlm_test_util import (run_main, BUNDLED_MODEL, REPO, Processes, TestFailure, free_port, get_json, request, require,
                           wait_until)

GENERATION_REQUESTS = 3


def query(prometheus_port, promql):
    data = get_json(prometheus_port, "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    require(data.get("status") == "success", f"query {promql!r}: {data}")
    return data["data"]["result"]


def dashboard_queries():
    """The dashboard's PromQL with Grafana's variables replaced by what they stand for."""
    with open(REPO / "deploy" / "grafana" / "qlm-dashboard.json") as f:
        dashboard = json.load(f)
    queries = []
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    require(variables.get("datasource", {}).get("type") == "datasource"
            and variables["datasource"].get("query") == "prometheus",
            "the dashboard has no Prometheus data source variable")

    def walk(node):
        if isinstance(node, dict):
            for target in node.get("targets", []):
                require(target.get("datasource", {}).get("uid") == "${datasource}",
                        f"panel {node.get('title')!r} does not use the $datasource variable")
                queries.append((node.get("title", "?"), target["expr"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(dashboard.get("panels", []))
    replacements = {"$__rate_interval": "15s", "$job": ".*", "$instance": ".*"}
    for title, expr in queries:
        for variable, value in replacements.items():
            expr = expr.replace(variable, value)
        require("$" not in expr, f"panel {title!r}: unreplaced variable in {expr!r}")
        yield title, expr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="path to the qlm-serve binary")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    options = parser.parse_args()
    require(shutil.which(options.prometheus), f"{options.prometheus} not found (Debian: prometheus)")
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="qlm-prometheus-") as workdir:
        processes = Processes(workdir)
        try:
            _, qlm_port = processes.start_qlm_serve("qlm-serve", options.server,
                                                    ["--model", BUNDLED_MODEL, "--threads", "1"])
            prometheus_port = free_port()
            config = Path(workdir) / "prometheus.yml"
            config.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {REPO / "deploy" / "prometheus" / "alerts.yml"}
scrape_configs:
  - job_name: qlm
    static_configs:
      - targets: ["127.0.0.1:{qlm_port}"]
""")
            prometheus = processes.start("prometheus", [
                options.prometheus, f"--config.file={config}", f"--storage.tsdb.path={Path(workdir) / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"])
            try:
                wait_until(lambda: request(prometheus_port, "GET", "/-/ready", timeout=2)[0] == 200, 30,
                           "Prometheus /-/ready")
            except TestFailure:
                processes.dump_log(prometheus)
                raise
            print(f"qlm-serve on :{qlm_port}, Prometheus {options.prometheus} on :{prometheus_port}")

            # The target is up, and the counters arrive with their labels and values.
            # Prometheus' scrape manager starts its first scrape about 5 s after start-up.
            up = wait_until(lambda: query(prometheus_port, 'up{job="qlm"} == 1'), 30, "up{job=\"qlm\"} == 1")
            print(f"up: {up[0]['metric']['instance']} after {time.monotonic() - started:.1f} s")
            for i in range(GENERATION_REQUESTS):
                status, _, body = request(qlm_port, "POST", "/v1/completions",
                                          {"prompt": "And God said", "max_tokens": 6, "seed": i}, timeout=60)
                require(status == 200, f"completion {i}: {status} {body[:200]!r}")
            status, _, _ = request(qlm_port, "POST", "/v1/completions", b"{not json", timeout=10)
            require(status == 400, f"malformed JSON gave {status}, expected 400")

            completions = wait_until(
                lambda: [r for r in query(prometheus_port, 'qlm_requests_total{job="qlm",endpoint="/v1/completions"}')
                         if float(r["value"][1]) >= (GENERATION_REQUESTS if r["metric"]["status"] == "200" else 1)
                         and r["metric"]["status"] in ("200", "400")],
                20, "qlm_requests_total for /v1/completions (200 x3 and 400 x1) in Prometheus")
            by_status = {r["metric"]["status"]: float(r["value"][1]) for r in completions}
            require(set(by_status) == {"200", "400"}, f"statuses {by_status}")
            require(by_status["200"] == GENERATION_REQUESTS and by_status["400"] == 1, f"counts {by_status}")
            print(f"qlm_requests_total{{endpoint=\"/v1/completions\"}} through Prometheus: {by_status}")
            generated = wait_until(lambda: query(prometheus_port, 'qlm_generation_tokens_total{job="qlm"} > 0'), 10,
                                   "qlm_generation_tokens_total > 0")
            print(f"qlm_generation_tokens_total: {generated[0]['value'][1]}")
            errors = query(prometheus_port, 'qlm_errors_total{job="qlm",kind="bad_request"}')
            require(errors and float(errors[0]["value"][1]) >= 1, f"qlm_errors_total{{kind=bad_request}}: {errors}")
            quantile = query(prometheus_port, 'histogram_quantile(0.5, sum by (le) '
                             '(qlm_time_to_first_token_seconds_bucket{job="qlm"}))')
            require(quantile and 0 < float(quantile[0]["value"][1]) < 60, f"TTFT median {quantile}")
            print(f"TTFT median from the histogram: {float(quantile[0]['value'][1]) * 1000:.1f} ms")

            # The alert rules load and evaluate without error; none fires on an idle, healthy server
            # (the "for:" clauses of the slow ones have not elapsed either way).
            def rules_evaluated():
                groups = get_json(prometheus_port, "/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                              not r["lastEvaluation"].startswith("0001") for r in rules) else None
            rules = wait_until(rules_evaluated, 15, "every alert rule evaluated once")
            broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
            require(not broken, f"alert rules with errors: {broken}")
            firing = [r["name"] for r in rules if r.get("state") == "firing"]
            require(not firing, f"alerts firing on a healthy server: {firing}")
            print(f"{len(rules)} alert rules evaluated by Prometheus, health ok, none firing")

            # Every dashboard query parses and runs; most return data on this live server.
            # (rates need two scrapes after the requests: poll a few seconds for them).
            queries = list(dashboard_queries())

            def run_dashboard():
                empty = [(title, expr) for title, expr in queries if not query(prometheus_port, expr)]
                return empty if len(empty) <= len(queries) // 4 else None
            try:
                empty = wait_until(run_dashboard, 15, "data in three quarters of the dashboard's queries",
                                   interval=1) or []
            except TestFailure:
                for title, expr in queries:
                    if not query(prometheus_port, expr):
                        print(f"  no data: {title}: {expr}")
                raise
            print(f"{len(queries)} dashboard queries run through Prometheus, {len(queries) - len(empty)} with data"
                  + "".join(f"\n  no data (nothing to show yet): {title}: {expr}" for title, expr in empty))
        finally:
            processes.close()
    print(f"OK in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
