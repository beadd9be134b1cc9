#!/usr/bin/env python3
"""Fuzzes qlm-serve over HTTP: random and mutated JSON bodies, parameter values of every wrong kind,
lying and huge headers, truncated bodies and random bytes, over raw sockets and http.client.

usage: fuzz_server.py QLM_SERVE MODEL_DIR [--seconds S] [--seed N]

Fixed seed, bounded time. Fails if any response is a 5xx, if a 4xx body is not OpenAI's error shape,
if a 200 is not JSON (or SSE ending in [DONE]), or if afterwards the process is gone, /health does not
answer or a normal completion fails. Python 3 standard library only.
"""
import argparse
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("model")
ap.add_argument("--seconds", type=float, default=30.0)
ap.add_argument("--seed", type=int, default=20261205)
args = ap.parse_args()
rng = random.Random(args.seed)

FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
          "logit_bias", "echo", "logprobs", "stream", "stream_options", "user", "best_of", "suffix", "model", "messages",
          "max_completion_tokens", "top_logprobs"]
PATHS = ["/v1/completions", "/v1/chat/completions", "/generate"]
WEIRD = [None, True, False, 0, -1, 1, 2, 3, 17, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64 + 5, 10 ** 30, 1e308, -1e308, 0.5, -0.0, 1e-320,
         "", "x", "0", "NaN", "\u0000", "\ud7ff\ue000", "😀" * 10, "\n\nUser:", "a" * 3000, [], [[]], [0], [-1], [50256], [50257],
         [1.5], ["a"], [[1, 2], [3]], [None], {}, {"a": 1}, {"50256": -100}, {"1": "x"}, {"-1": 1}, {"1": 1e9},
         {"include_usage": True}, {"include_usage": "yes"}, [{"role": "user", "content": "hi"}], [{"role": "user"}],
         [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], [{"role": "user", "content": [{"type": "image"}]}],
         [{"role": "x", "content": 1}]]


def good_body(path):
    if path == "/v1/chat/completions":
        b = {"messages": [{"role": "user", "content": rng.choice(["hi", "Who is Moses?", ""])}]}
    else:
        b = {"prompt": rng.choice(["In the beginning", [818, 262], "", ["a", "b"], [[1], [2, 3]]])}
    b["max_tokens"] = rng.choice([1, 2, 4])
    if rng.random() < 0.3:
        b["stream"] = True
    return b


def mutate_value(v, depth=0):
    r = rng.random()
    if r < 0.5 or depth > 3:
        return rng.choice(WEIRD)
    if isinstance(v, dict) and v:
        k = rng.choice(list(v))
        v = dict(v)
        v[k] = mutate_value(v[k], depth + 1)
        return v
    if isinstance(v, list) and v:
        v = list(v)
        i = rng.randrange(len(v))
        v[i] = mutate_value(v[i], depth + 1)
        return v
    return rng.choice(WEIRD)


def json_body(path):
    b = good_body(path)
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.6:
            b[rng.choice(FIELDS)] = mutate_value(b.get(rng.choice(FIELDS)))
        elif r < 0.8:
            b.pop(rng.choice(list(b)), None) if b else None
        else:
            b["".join(rng.choice("abcxyz_") for _ in range(rng.randint(1, 8)))] = rng.choice(WEIRD)
    # keep generations short: the fuzz is about parsing, not about waiting for tokens
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(b.get(key), int) and not isinstance(b.get(key), bool) and b[key] > 8:
            b[key] = rng.choice([b[key], 8]) if b[key] > 300 else 8
    if isinstance(b.get("n"), int) and not isinstance(b.get("n"), bool) and 4 < b["n"] <= 64:
        b["n"] = 4
    text = json.dumps(b, allow_nan=True)
    r = rng.random()
    if r < 0.15:  # byte-level mutations of valid JSON
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            op = rng.random()
            i = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                data[min(i, len(data) - 1)] = rng.randrange(256)
            elif op < 0.7:
                data[i:i] = bytes([rng.randrange(256)])
            elif data:
                del data[min(i, len(data) - 1)]
        return bytes(data)
    if r < 0.2:
        return text.encode()[: rng.randrange(len(text) + 1)]  # truncated
    if r < 0.25:
        return rng.choice([b"NaN", b"Infinity", b"-Infinity", b'{"prompt":"x","temperature":NaN}', b'{"prompt":"x","top_p":Infinity}',
                           b'{"prompt":"x","max_tokens":1e99999}', b'{"prompt":"\\ud800"}', b'{"prompt":"x",}', b"\xff\xfe{}",
                           b'{"prompt":"\xc3\x28"}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"null", b"0", b'""'])
    if r < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    if r < 0.31:
        return b'{"prompt":"' + b"a" * 70000 + b'"}'  # over --max-body-bytes: 413
    return text.encode()


failures = []
counts = {}


def fail(what):
    failures.append(what)
    if len(failures) <= 20:
        print("FAIL:", what, flush=True)


def check_response(status, headers, body, what, head=False):
    counts[status] = counts.get(status, 0) + 1
    if head:  # HEAD: no body to check
        if status >= 500:
            fail("%s -> %d" % (what, status))
        return
    if status >= 500:
        fail("%s -> %d %r" % (what, status, body[:300]))
        return
    ctype = headers.get("content-type", "")
    if 400 <= status < 500:
        try:
            e = json.loads(body)["error"]
            assert set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str) and e["message"]
        except Exception:
            fail("%s -> %d with a body that is not the JSON error shape: %r" % (what, status, body[:300]))
    elif status == 200:
        if ctype.startswith("text/plain"):  # /metrics
            if b"qlm_requests_total" not in body:
                fail("%s -> a metrics page without qlm_requests_total" % what)
        elif ctype.startswith("text/event-stream"):
            if not body.rstrip().endswith(b"data: [DONE]"):
                fail("%s -> a stream not ending in [DONE]: %r" % (what, body[-300:]))
        else:
            try:
                json.loads(body)
            except ValueError:
                fail("%s -> 200 with a body that is not JSON: %r" % (what, body[:300]))


def read_http_response(sock, deadline, head=False):
    """Reads one HTTP/1.1 response (Content-Length or chunked) from a raw socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("no response headers")
        d = sock.recv(65536)
        if not d:
            if not buf:
                return None  # closed without an answer (allowed only for garbage requests)
            raise ConnectionError("closed inside headers: %r" % buf[:200])
        buf += d
    header_block, rest = buf.split(b"\r\n\r\n", 1)
    lines = header_block.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ValueError("bad status line %r" % lines[0])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    status = int(m.group(1))

    def more():
        if time.monotonic() > deadline:
            raise TimeoutError("body too slow")
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed inside the body")
        return d

    if head or status in (204, 304):
        return status, headers, b""
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            rest += more()
        return status, headers, rest[:n]
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += more()
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return status, headers, body
    return status, headers, rest


def raw_request(port, data, what, garbage=False, head=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR) if garbage else None
        except OSError:
            pass
        r = read_http_response(s, time.monotonic() + 20, head)
        if r is None:
            if not garbage:
                fail("%s: connection closed without a response" % what)
            return
        check_response(*r, what, head=head)
    except (ConnectionError, ValueError) as e:
        if not garbage:
            fail("%s: %r" % (what, e))
    except (TimeoutError, socket.timeout) as e:
        fail("%s: %s" % (what, e))
    finally:
        s.close()


def header_case(port):
    path = rng.choice(PATHS + ["/health", "/metrics", "/nope", "/v1/models", "/" + "a" * 9000])
    body = json_body(path if path in PATHS else "/v1/completions")
    method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"])
    headers = [("Host", "127.0.0.1")]
    r = rng.random()
    length = len(body)
    garbage = False
    if r < 0.15:
        headers.append(("Content-Length", str(max(0, length - rng.randint(1, max(1, length))))))  # shorter than the body
        garbage = True
    elif r < 0.25:
        headers.append(("Content-Length", str(length + rng.randint(1, 100))))  # longer: the server must time out reading, not hang
        garbage = True
    elif r < 0.3:
        headers.append(("Content-Length", rng.choice(["-5", "abc", "99999999999999999999", "1e3", ""])))
        garbage = True
    elif r < 0.35:
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" if rng.random() < 0.7 else b"zz\r\n" + body
        garbage = True
    else:
        headers.append(("Content-Length", str(length)))
    if rng.random() < 0.3:
        headers.append(("Content-Type", rng.choice(["text/plain", "application/json; charset=latin1", "multipart/form-data; boundary=x",
                                                    "application/x-www-form-urlencoded", "\x01\x02"])))
    if rng.random() < 0.1:
        headers.append(("X-Huge", "h" * rng.choice([100, 9000, 70000])))
        garbage = True
    if rng.random() < 0.1:
        headers.append(("Authorization", rng.choice(["Bearer", "Bearer x", "Basic Zm9v", "B" * 5000])))
    if rng.random() < 0.05:
        headers += [("X-Many-%d" % i, "v") for i in range(200)]
        garbage = True
    if rng.random() < 0.05:
        method = "".join(rng.choice("ABCDEFGH \r\n") for _ in range(rng.randint(1, 10)))
        garbage = True
    head = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % kv for kv in headers) + "Connection: close\r\n\r\n"
    data = head.encode("latin-1", errors="replace") + body
    if rng.random() < 0.05:
        data = data[: rng.randrange(len(data))]
        garbage = True
    # a lying Content-Length (longer) leaves the server waiting for bytes that never come: shut the
    # write side so it sees the end at once instead of its read timeout
    raw_request(port, data, "raw %s %s" % (method, path[:40]), garbage=garbage or method not in ("POST", "GET", "HEAD"), head=method == "HEAD")


def client_case(port):
    path = rng.choice(PATHS)
    body = json_body(path)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        check_response(r.status, {k.lower(): v for k, v in r.getheaders()}, data, "POST %s %r" % (path, body[:200]))
    except (socket.timeout, TimeoutError) as e:
        fail("POST %s %r: %s" % (path, body[:200], e))
    finally:
        c.close()


def main():
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([args.binary, "--model", args.model, "--port", "0", "--threads", "1", "--max-body-bytes", "65536",
                             "--request-timeout", "20"], stdout=subprocess.PIPE, stderr=err)
    try:
        line = [b""]
        t = threading.Thread(target=lambda: line.__setitem__(0, proc.stdout.readline()), daemon=True)
        t.start()
        t.join(120)
        m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line[0])
        if not m:
            print("qlm-serve did not start:", line[0])
            sys.exit(1)
        port = int(m.group(1))
        end = time.monotonic() + args.seconds
        n = 0
        lock = threading.Lock()

        def worker(seed):
            nonlocal n
            global rng
            while time.monotonic() < end and proc.poll() is None:
                (client_case if rng.random() < 0.6 else header_case)(port)
                with lock:
                    n += 1

        # two client threads: requests overlap in the engine as they would in production
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(args.seconds + 120)
        print("fuzz: %d requests in %.0f s; statuses %s" % (n, args.seconds, dict(sorted(counts.items()))), flush=True)
        if proc.poll() is not None:
            fail("qlm-serve died with status %r" % proc.returncode)
        else:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            c.request("GET", "/health")
            r = c.getresponse()
            if r.status != 200 or json.loads(r.read()) != {"status": "ok"}:
                fail("/health after the fuzz: %d" % r.status)
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": "In the beginning", "max_tokens": 8, "temperature": 0}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            if r.status != 200 or body["usage"]["completion_tokens"] != 8:
                fail("a normal completion after the fuzz: %d %r" % (r.status, body))
            c.request("GET", "/metrics")
            r = c.getresponse()
            text = r.read().decode()
            running = re.search(r"^qlm_requests_running (\S+)$", text, re.M)
            if r.status != 200 or not running:
                fail("/metrics after the fuzz")
            c.close()
            if n < 1000 and args.seconds >= 30:
                fail("only %d requests in %.0f s" % (n, args.seconds))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        err.seek(0)
        log = err.read().decode(errors="replace")
        if proc.returncode not in (0, None) or "AddressSanitizer" in log or "runtime error" in log:
            fail("qlm-serve exited with %r; stderr tail: %s" % (proc.returncode, log[-3000:]))
    if failures:
        print("%d failures" % len(failures))
        sys.exit(1)
    print("fuzz passed")


if __name__ == "__main__":
    main()
