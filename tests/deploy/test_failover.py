"""Failover: three qlm-serve replicas behind a real nginx (deploy/nginx/qlm.conf), a load of
non-streamed and streamed completions from client threads, and one replica killed (SIGKILL) in the
middle. Asserts that no non-streamed request fails (nginx retries them on a survivor) and that both
survivors serve requests after the kill; prints how many streams the killed replica cut, and latency
and throughput before and after.

    python3 test_failover.py --server build/release/examples/qlm-serve [--nginx nginx]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from qlm_test_util import (run_main, BUNDLED_MODEL, REPO, Processes, TestFailure, free_port, metric_sum, request, require,
                           scrape, wait_until)

REPLICAS = 3
PLAIN_CLIENTS = 6
STREAM_CLIENTS = 3
BEFORE_S = 3.0  # load before the kill
AFTER_S = 4.0   # load after it
PROMPTS = ["In the beginning", "And God said", "The LORD is my shepherd", "Blessed are the meek",
           "And it came to pass", "Let there be light"]


def render_nginx_conf(listen_port, upstream_ports):
    """deploy/nginx/qlm.conf with our ports: one upstream line per replica, our listen address."""
    lines, template_upstream = [], None
    for line in (REPO / "deploy" / "nginx" / "qlm.conf").read_text().splitlines():
        if "# qlm:upstream" in line:
            if template_upstream is None:
                template_upstream = line
                lines += [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{p}", line) for p in upstream_ports]
        elif "# qlm:listen" in line:
            lines.append(re.sub(r"listen \S+;", f"listen 127.0.0.1:{listen_port};", line))
        else:
            lines.append(line)
    require(template_upstream is not None, "deploy/nginx/qlm.conf has no line marked qlm:upstream")
    return "\n".join(lines) + "\n"


class Load:
    """Client threads sending completions through nginx until stopped; every outcome is recorded."""

    def __init__(self, port):
        self.port, self.stop = port, threading.Event()
        self.lock, self.records = threading.Lock(), []

    def record(self, **fields):
        with self.lock:
            self.records.append(fields)

    def plain_client(self, index):
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {"prompt": PROMPTS[(index + n) % len(PROMPTS)], "max_tokens": 16, "seed": index * 1000 + n}
            start = time.monotonic()
            try:
                status, _, raw = request(self.port, "POST", "/v1/completions", body, timeout=60)
                ok = status == 200
                tokens = json.loads(raw)["usage"]["completion_tokens"] if ok else 0
                error = None if ok else f"status {status}: {raw[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                ok, tokens, error = False, 0, f"{type(e).__name__}: {e}"
            self.record(kind="plain", start=start, end=time.monotonic(), ok=ok, tokens=tokens, error=error)

    def stream_client(self, index):
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {"prompt": PROMPTS[(index + n) % len(PROMPTS)], "max_tokens": 128, "seed": index * 1000 + n,
                    "stream": True}
            start, chunks, done, error = time.monotonic(), 0, False, None
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("POST", "/v1/completions", body=json.dumps(body),
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                if response.status != 200:
                    error = f"status {response.status}"
                else:
                    for line in response:
                        line = line.strip()
                        if line == b"data: [DONE]":
                            done = True
                        elif line.startswith(b"data: "):
                            json.loads(line[6:])
                            chunks += 1
            except (OSError, http.client.HTTPException, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
            finally:
                connection.close()
            if not done and error is None:
                error = f"stream ended without [DONE] after {chunks} chunks"
            self.record(kind="stream", start=start, end=time.monotonic(), ok=done, tokens=chunks, error=error)

    def run(self, seconds_before, kill):
        threads = [threading.Thread(target=self.plain_client, args=(i,), daemon=True) for i in range(PLAIN_CLIENTS)]
        threads += [threading.Thread(target=self.stream_client, args=(i,), daemon=True) for i in range(STREAM_CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(seconds_before)
        kill_time = kill()
        time.sleep(AFTER_S)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=90)
            require(not thread.is_alive(), "a client thread did not finish within 90 s")
        return kill_time


def summary(records, t0, t1):
    """Throughput and latency of the non-streamed requests that started in [t0, t1)."""
    window = [r for r in records if r["kind"] == "plain" and t0 <= r["start"] < t1 and r["ok"]]
    if not window:
        return "no requests"
    latencies = sorted(r["end"] - r["start"] for r in window)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return (f"{len(window) / (t1 - t0):5.1f} req/s, {sum(r['tokens'] for r in window) / (t1 - t0):6.0f} tokens/s, "
            f"latency p50 {statistics.median(latencies) * 1000:4.0f} ms, p95 {p95 * 1000:4.0f} ms, "
            f"max {latencies[-1] * 1000:4.0f} ms ({len(window)} requests)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="path to the qlm-serve binary")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    options = parser.parse_args()
    require(os.access(options.nginx, os.X_OK), f"{options.nginx} not found (Debian: nginx)")
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="qlm-failover-") as workdir:
        prefix = Path(workdir) / "nginx"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "tmp").mkdir()
        processes = Processes(workdir)
        try:
            replicas = [processes.start_qlm_serve(f"replica{i}", options.server,
                                                  ["--model", BUNDLED_MODEL, "--threads", "1"])
                        for i in range(REPLICAS)]
            ports = [port for _, port in replicas]
            nginx_port = free_port()
            conf = prefix / "qlm.conf"
            conf.write_text(render_nginx_conf(nginx_port, ports))
            nginx = processes.start("nginx", [options.nginx, "-p", str(prefix), "-c", str(conf),
                                              "-e", "logs/error.log", "-g", "daemon off;"])
            try:
                wait_until(lambda: request(nginx_port, "GET", "/health", timeout=2)[0] == 200, 20, "nginx -> /health")
            except TestFailure:
                processes.dump_log(nginx)
                print((prefix / "logs" / "error.log").read_text(errors="replace")[-2000:])
                raise
            print(f"replicas on {ports}, nginx on {nginx_port}; {PLAIN_CLIENTS} non-streaming and "
                  f"{STREAM_CLIENTS} streaming clients, kill replica 0 (:{ports[0]}) after {BEFORE_S:g} s")

            victim, survivors = replicas[0][0], ports[1:]
            served_before = {}

            def kill():
                for port in survivors:
                    served_before[port] = metric_sum(scrape(port)[0], "qlm_requests_total", endpoint="/v1/completions")
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
                return time.monotonic()

            load = Load(nginx_port)
            load_start = time.monotonic()
            kill_time = load.run(BEFORE_S, kill)
            load_end = time.monotonic()
            served_after = {port: metric_sum(scrape(port)[0], "qlm_requests_total", endpoint="/v1/completions")
                            - served_before[port] for port in survivors}
        finally:
            processes.close()
        access_log = (prefix / "logs" / "access.log").read_text(errors="replace")

    records = load.records
    plain = [r for r in records if r["kind"] == "plain"]
    streams = [r for r in records if r["kind"] == "stream"]
    plain_failed = [r for r in plain if not r["ok"]]
    streams_cut = [r for r in streams if not r["ok"]]
    retried = len(re.findall(r'upstream="[^"]*, [^"]*"', access_log))
    print(f"before the kill: {summary(records, load_start, kill_time)}")
    print(f"after the kill:  {summary(records, kill_time, load_end)}")
    print(f"non-streamed: {len(plain)} requests, {len(plain_failed)} failed; nginx retried {retried} "
          f"on another replica (access log)")
    print(f"streamed: {len(streams)} streams, {len(streams_cut)} cut by the kill (in flight on replica 0): "
          + "; ".join(sorted({r['error'] for r in streams_cut})))
    print(f"requests served by the survivors after the kill: {served_after}")

    for r in plain_failed[:5]:
        print(f"  failed at +{r['start'] - load_start:.2f} s: {r['error']}", file=sys.stderr)
    require(not plain_failed, f"{len(plain_failed)} non-streamed requests failed through nginx")
    require(all(count > 0 for count in served_after.values()), f"a survivor served nothing after the kill: {served_after}")
    require(sum(1 for r in plain if r["start"] >= kill_time and r["ok"]) > 0, "no request completed after the kill")
    require(len(streams) > len(streams_cut), "no stream completed at all")
    require(all(r["start"] < kill_time for r in streams_cut), "a stream started after the kill was cut")
    print(f"OK in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
