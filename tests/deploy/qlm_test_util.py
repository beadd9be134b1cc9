"""Shared pieces of the deployment tests: start and stop real processes on 127.0.0.1, talk HTTP.

Standard library only. Every wait has a deadline; every process started here is stopped by
`Processes.close()` (the tests call it from `finally`), SIGTERM first, SIGKILL after a grace period.
"""
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "models" / "gpt2-tiny-kjv"
LISTENING = re.compile(r"^qlm-serve: listening on http://([0-9.]+):(\d+)$")


class TestFailure(Exception):
    pass


def require(condition, message):
    if not condition:
        raise TestFailure(message)


def run_main(main):
    """Exits with main()'s status; a failed require() prints FAIL: and exits 1."""
    try:
        sys.exit(main())
    except TestFailure as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
        sys.exit(1)


def free_port():
    """A port free right now on 127.0.0.1, for programs that cannot be told to pick one (port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=30, headers=None):
    """One HTTP request; returns (status, headers dict, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        all_headers = {"Content-Type": "application/json"} if payload is not None else {}
        all_headers.update(headers or {})
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(port, path, timeout=10):
    status, _, body = request(port, "GET", path, timeout=timeout)
    require(status == 200, f"GET {path} on port {port}: status {status}: {body[:200]!r}")
    return json.loads(body)


def wait_until(predicate, timeout, what, interval=0.1):
    """Polls predicate() until it returns a true value (which is returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    raise TestFailure(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


def parse_metrics(text):
    """Prometheus text format -> ({sample name: [(labels dict, value)]}, {family name: type})."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
            require(match is not None, f"unparsable metrics line: {line!r}")
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
            samples.setdefault(match.group(1), []).append((labels, float(match.group(4))))
    return samples, types


def scrape(port):
    status, _, body = request(port, "GET", "/metrics", timeout=10)
    require(status == 200, f"GET /metrics on port {port}: status {status}")
    return parse_metrics(body.decode())


def metric_sum(samples, name, **labels):
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == want for k, want in labels.items()))


class Processes:
    """The processes a test started; close() stops all of them, newest first."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.procs = []

    def start(self, name, argv, **kwargs):
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=kwargs.pop("stdout", log), stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        proc.name, proc.log_path = name, self.workdir / f"{name}.log"
        self.procs.append(proc)
        return proc

    def start_qlm_serve(self, name, binary, extra_args=(), timeout=60):
        """Starts qlm-serve on port 0 and returns (process, port) once it prints its listening line."""
        argv = [str(binary), "--host", "127.0.0.1", "--port", "0", *map(str, extra_args)]
        proc = self.start(name, argv, stdout=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    match = LISTENING.match(line.strip())
                    if match:
                        proc.port = int(match.group(2))
                        return proc, proc.port
            elif proc.poll() is not None:
                break
        self.dump_log(proc)
        raise TestFailure(f"{name} did not print its listening line within {timeout} s "
                          f"(exit status {proc.poll()}, stdout {buffer[-300:]!r})")

    @staticmethod
    def dump_log(proc, lines=30):
        try:
            tail = proc.log_path.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last lines of {proc.name}'s log ---", *tail, sep="\n")
        except OSError:
            pass

    def close(self, grace=5):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()
