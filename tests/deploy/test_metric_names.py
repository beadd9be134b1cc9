"""Every qlm_* metric that the alert rules, their unit tests and the Grafana dashboard use is one that
a running qlm-serve exports (a renamed metric would otherwise leave a silent alert or an empty panel).

    python3 test_metric_names.py --server build/release/examples/qlm-serve
"""
import argparse
import json
import re
import sys
import tempfile

from qlm_test_util import run_main, BUNDLED_MODEL, REPO, Processes, request, require, scrape

METRIC = re.compile(r"\b(qlm_[a-z0-9_]+|process_start_time_seconds)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_expressions(path):
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
    with open(path) as f:
        return list(walk(json.load(f)))


def yaml_values(text, keys):
    """The values of `key:` entries (inline or block scalars) in a YAML file, without a YAML parser."""
    lines, values = text.splitlines(), []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?(" + "|".join(keys) + r"):\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(3)
        if rest and rest[0] not in "|>":
            values.append(rest)
            continue
        block = []
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following)
        values.append("\n".join(block))
    return values


def referenced_names(sources):
    """{metric name: (strict, {where})} over the text of each source; strict when it is a query."""
    found = {}
    for where, text, strict in sources:
        for name in METRIC.findall(text):
            was_strict, places = found.get(name, (False, set()))
            found[name] = (was_strict or strict, places | {where})
    return found


def exported(name, strict, samples, types):
    """True when /metrics has the name as a sample, a counter/gauge family, or a histogram's series
    (and, in prose rather than a query, a histogram's family name)."""
    if name in samples or types.get(name) in ("counter", "gauge", "untyped"):
        return True
    if not strict and types.get(name) == "histogram":
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="path to the qlm-serve binary")
    options = parser.parse_args()

    prometheus_dir, grafana = REPO / "deploy" / "prometheus", REPO / "deploy" / "grafana" / "qlm-dashboard.json"
    # Queries (rule expressions, unit-test series, dashboard targets) must name series that exist;
    # prose (annotations, comments) may also name a histogram by its family name.
    sources = []
    for path in sorted(prometheus_dir.glob("alerts*.yml")):
        text, where = path.read_text(), f"deploy/prometheus/{path.name}"
        sources += [(where, value, True) for value in yaml_values(text, ["expr", "series"])]
        sources.append((where, text, False))
    sources += [("deploy/grafana/qlm-dashboard.json", e, True) for e in dashboard_expressions(grafana)]
    sources += [(f"deploy/k8s/{p.relative_to(REPO / 'deploy' / 'k8s')}", p.read_text(), False)
                for p in sorted((REPO / "deploy" / "k8s").rglob("*.yaml"))]
    wanted = referenced_names(sources)
    require(len(wanted) >= 10, f"found only {sorted(wanted)} in the rules and dashboard: is the parsing broken?")

    with tempfile.TemporaryDirectory(prefix="qlm-metric-names-") as workdir:
        processes = Processes(workdir)
        try:
            _, port = processes.start_qlm_serve("qlm-serve", options.server,
                                                ["--model", BUNDLED_MODEL, "--threads", "1"])
            # One completion, so that labelled series (per endpoint) exist as well as their families.
            status, _, body = request(port, "POST", "/v1/completions",
                                      {"prompt": "In the beginning", "max_tokens": 4, "temperature": 0}, timeout=60)
            require(status == 200, f"completion failed: {status} {body[:200]!r}")
            samples, types = scrape(port)
        finally:
            processes.close()

    missing = {name: sorted(where) for name, (strict, where) in wanted.items()
               if not exported(name, strict, samples, types)}
    print(f"{len(wanted)} metric names referenced; qlm-serve exports {len(types)} families")
    for name in sorted(wanted):
        print(f"  {'MISSING ' if name in missing else 'ok      '}{name}")
    if missing:
        for name, where in sorted(missing.items()):
            print(f"FAIL: {name} (used in {', '.join(where)}) is not exported by qlm-serve", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
