"""Checks that manifests rendered by `kubectl kustomize` are what deploy/k8s claims to deploy.

    python3 check_k8s.py RENDERED.yaml [--replicas N]

Each claim is checked on the rendered objects (after kustomize's labels, name suffixes and patches),
so a patch or a label that breaks a selector fails here. Needs PyYAML (Debian: python3-yaml).
"""
import argparse
import re
import sys

import yaml

IMAGE_PORT = 8000  # deploy/Dockerfile: ENTRYPOINT qlm-serve --host 0.0.0.0 --port 8000
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def one(objects, kind):
    found = [o for o in objects if o.get("kind") == kind]
    if not check(len(found) == 1, f"expected one {kind}, found {len(found)}"):
        raise SystemExit("\n".join(failures))
    return found[0]


def selects(selector, labels):
    """True when every key: value of the selector is among the labels (and it selects something)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_arg(value, container, config_maps):
    """Expands $(VAR) from the container's env / envFrom ConfigMaps, as the kubelet does."""
    match = re.fullmatch(r"\$\((\w+)\)", value)
    if not match:
        return value
    name = match.group(1)
    for env in container.get("env", []):
        if env["name"] == name:
            if "value" in env:
                return env["value"]
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            check(ref is not None, f"{name} comes from neither a value nor a ConfigMap")
            return config_maps[ref["name"]]["data"][ref["key"]]
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and check(ref["name"] in config_maps, f"envFrom names a missing ConfigMap {ref['name']}"):
            data = config_maps[ref["name"]].get("data", {})
            if name in data:
                return data[name]
    check(False, f"argument $({name}) is defined nowhere")
    return None


def flag_value(args, flag):
    if not check(flag in args, f"the container is not given {flag}"):
        return None
    index = args.index(flag)
    return args[index + 1] if check(index + 1 < len(args), f"{flag} has no value") else None


def probe_hits(probe, path, port_names, port_number):
    get = (probe or {}).get("httpGet", {})
    return get.get("path") == path and (get.get("port") in port_names or get.get("port") == port_number)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--replicas", type=int, required=True)
    options = parser.parse_args()
    with open(options.rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]

    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    check(len(names) == len(set(names)), f"duplicate objects: {names}")
    deployment = one(objects, "Deployment")
    service = one(objects, "Service")
    hpa = one(objects, "HorizontalPodAutoscaler")
    pdb = one(objects, "PodDisruptionBudget")
    monitor = one(objects, "ServiceMonitor")
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    namespaces = {o["metadata"].get("namespace") for o in objects}
    check(len(namespaces) == 1, f"objects spread over namespaces {namespaces}")

    spec = deployment["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]
    check(spec.get("replicas") == options.replicas, f"replicas {spec.get('replicas')}, expected {options.replicas}")
    check(selects(spec["selector"]["matchLabels"], pod_labels), "the Deployment's selector misses its own pods")
    containers = pod["spec"]["containers"]
    check(len(containers) == 1, "expected one container")
    container = containers[0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check("http" in ports, "the container has no port named http")
    port_number = ports.get("http")

    # Probes: readiness on /ready, liveness and startup on /health, all on the container's port.
    check(probe_hits(container.get("readinessProbe"), "/ready", ports, port_number),
          "readinessProbe does not GET /ready on the container port")
    check(probe_hits(container.get("livenessProbe"), "/health", ports, port_number),
          "livenessProbe does not GET /health on the container port")
    check(probe_hits(container.get("startupProbe"), "/health", ports, port_number),
          "startupProbe does not GET /health on the container port")

    # Resources: requests and limits for cpu and memory, requests not above limits.
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            check(resource in resources.get(kind, {}), f"no {kind}.{resource}")

    # The flags, from the ConfigMap, reach the server; the grace period covers preStop + drain.
    args = [resolve_arg(a, container, config_maps) for a in container.get("args", [])]
    drain = flag_value(args, "--drain-timeout")
    check(port_number == IMAGE_PORT and "--port" not in args,
          f"the image's entrypoint listens on {IMAGE_PORT}; the container port is {port_number}")
    grace = pod["spec"].get("terminationGracePeriodSeconds")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    check(pre_stop[:1] == ["sleep"] and len(pre_stop) == 2, f"preStop is not a sleep: {pre_stop}")
    if drain is not None and grace is not None and len(pre_stop) == 2:
        sleep_s = float(pre_stop[1])
        check(grace > sleep_s + float(drain),
              f"terminationGracePeriodSeconds {grace} <= preStop sleep {sleep_s} + --drain-timeout {drain}")
        print(f"grace period {grace} s > preStop {sleep_s:g} s + drain {drain} s")
    security = pod["spec"].get("securityContext", {})
    check(security.get("runAsNonRoot") is True, "pods may run as root")

    # Service and monitoring.
    check(selects(service["spec"]["selector"], pod_labels), "the Service's selector misses the pods")
    check(any(p.get("targetPort") in ("http", port_number) for p in service["spec"]["ports"]),
          "the Service does not target the container port")
    check(selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]),
          "the ServiceMonitor's selector misses the Service")
    check(any(e.get("path") == "/metrics" and e.get("port") in [p.get("name") for p in service["spec"]["ports"]]
              for e in monitor["spec"]["endpoints"]), "the ServiceMonitor does not scrape /metrics on a Service port")
    annotations = pod["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    check(annotations.get("prometheus.io/port") == str(port_number), "prometheus.io/port is not the container port")

    # Autoscaler and disruption budget.
    target = hpa["spec"]["scaleTargetRef"]
    check(hpa["apiVersion"] == "autoscaling/v2", f"HPA apiVersion {hpa['apiVersion']}")
    check(target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"],
          f"the HPA targets {target}, not the Deployment")
    check(hpa["spec"]["minReplicas"] == options.replicas,
          "the HPA's minReplicas differs from the Deployment's replicas (it would rescale them at once)")
    check(hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"], "the HPA cannot scale up")
    metric_names = [m.get("pods", {}).get("metric", {}).get("name") or m.get("resource", {}).get("name")
                    for m in hpa["spec"]["metrics"]]
    check(any(n in ("cpu", "qlm_requests_waiting") for n in metric_names), f"HPA metrics {metric_names}")
    check(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "the PDB's selector misses the pods")
    check(pdb["spec"].get("maxUnavailable", 0) < options.replicas, "the PDB allows every pod down")
    for constraint in pod["spec"].get("topologySpreadConstraints", []):
        check(selects(constraint["labelSelector"]["matchLabels"], pod_labels),
              "a topology spread constraint misses the pods")

    if failures:
        print("FAIL: " + options.rendered, *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(f"OK: {options.rendered}: {len(objects)} objects, {options.replicas} replicas, "
          f"HPA {hpa['spec']['minReplicas']}..{hpa['spec']['maxReplicas']} on {metric_names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
