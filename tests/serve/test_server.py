#!/usr/bin/env python3
"""qlm-serve's integration test: real HTTP against the real server on 127.0.0.1 (a free port).

usage: test_server.py QLM_SERVE MODEL_DIR [PART...]   PART: api errors streaming lifecycle (default: all)

Each part starts the servers it needs and stops them (SIGTERM, then SIGKILL) also when a check fails.
Python 3 standard library only. Every wait is bounded.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "build/release/examples/qlm-serve"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "models/gpt2-tiny-kjv"
PARTS = sys.argv[3:] or ["api", "errors", "streaming", "lifecycle"]
TIMEOUT = 30  # seconds, any single HTTP exchange

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


class Server:
    """qlm-serve on a free port; the port comes from its listening line."""

    def __init__(self, *args, env=None, start_timeout=120):
        self.stderr_file = tempfile.TemporaryFile(mode="w+b")
        full_env = dict(os.environ)
        full_env.pop("QLM_API_KEYS", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen([BIN, "--port", "0", *args], stdout=subprocess.PIPE, stderr=self.stderr_file, env=full_env)
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(start_timeout)
        text = (line[0] or b"").decode()
        m = re.fullmatch(r"qlm-serve: listening on http://([0-9.]+):(\d+)\n", text)
        if not m:
            self.stop()
            raise RuntimeError("qlm-serve did not start: %r; stderr: %s" % (text, self.log_text()[-2000:]))
        self.host, self.port = m.group(1), int(m.group(2))

    def conn(self, timeout=TIMEOUT):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=TIMEOUT):
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, timeout=TIMEOUT):
        status, h, data = self.request(method, path, body, headers, timeout)
        try:
            return status, h, json.loads(data)
        except ValueError:
            return status, h, {"_raw": data.decode(errors="replace")}

    def post(self, path, body, headers=None, timeout=TIMEOUT):
        return self.json("POST", path, body, headers, timeout)

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200, status
        return parse_metrics(data.decode())

    def log_text(self):
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        if self.proc.poll() is None:
            self.proc.kill()


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset(labels)): value}; checks every line's syntax."""
    out = {}
    sample = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.fullmatch(r"(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*)?", line), line
            continue
        m = sample.fullmatch(line)
        assert m, "bad metrics line: " + line
        labels = frozenset(label.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())), 0.0)


def is_error_body(body, param=None):
    e = body.get("error") if isinstance(body, dict) else None
    ok = isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str) and e["message"]
    if ok and param is not None:
        ok = e["param"] == param
    return bool(ok)


def sse_events(resp, limit=100000):
    """Yields the data of each server-sent event of a streamed response."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            yield event[6:].decode()
    assert not buf.strip(), buf


def stream(server, path, body, timeout=TIMEOUT):
    c = server.conn(timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        assert r.getheader("Content-Type", "").startswith("text/event-stream")
        return list(sse_events(r))
    finally:
        c.close()


def wait_until(cond, timeout, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()


# ---------------------------------------------------------------------------------------------------
def part_api():
    with Server("--threads", "1", "--model", MODEL) as s:
        st, _, b = s.json("GET", "/health")
        check(st == 200 and b == {"status": "ok"}, "/health")
        st, _, b = s.json("GET", "/ready")
        check(st == 200, "/ready 200 when idle")
        st, _, b = s.json("GET", "/v1/models")
        check(st == 200 and b["object"] == "list" and b["data"][0]["id"] == "gpt2-tiny-kjv" and b["data"][0]["object"] == "model",
              "/v1/models lists the served model: %r" % b)
        before = s.metrics()

        # /generate, the tutorial's API
        st, _, g = s.post("/generate", {"prompt": "In the beginning", "max_tokens": 12, "temperature": 0})
        check(st == 200 and isinstance(g["text"], str) and g["tokens"] == 12 and g["finish_reason"] == "length"
              and g["usage"]["completion_tokens"] == 12 and g["usage"]["total_tokens"] == g["usage"]["prompt_tokens"] + 12, "/generate: %r" % g)
        st, _, g2 = s.post("/generate", {"prompt": "In the beginning", "max_tokens": 12, "temperature": 0})
        check(g2["text"] == g["text"], "/generate greedy is deterministic")

        # completions: greedy determinism, seeds
        req = {"prompt": "And God said", "max_tokens": 16, "temperature": 0}
        st, _, c1 = s.post("/v1/completions", req)
        st2, _, c2 = s.post("/v1/completions", req)
        check(st == 200 and st2 == 200 and c1["choices"][0]["text"] == c2["choices"][0]["text"] and c1["choices"][0]["text"],
              "temperature 0 twice -> the same text")
        check(c1["object"] == "text_completion" and c1["id"].startswith("cmpl-") and c1["model"] == "gpt2-tiny-kjv"
              and isinstance(c1["created"], int) and c1["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19},
              "completion body: %r" % c1)
        seeded = {"prompt": "And God said", "max_tokens": 16, "temperature": 1.0, "seed": 1234}
        a = s.post("/v1/completions", seeded)[2]["choices"][0]["text"]
        b_ = s.post("/v1/completions", seeded)[2]["choices"][0]["text"]
        texts = {s.post("/v1/completions", dict(seeded, seed=k))[2]["choices"][0]["text"] for k in range(5)}
        check(a == b_ and len(texts) > 1, "the same seed -> the same text, other seeds differ")

        # prompt forms and n: index = prompt * n + sample
        st, _, m = s.post("/v1/completions", {"prompt": ["In the beginning", [818, 262, 3726]], "n": 2, "max_tokens": 5, "temperature": 0})
        check(st == 200 and [ch["index"] for ch in m["choices"]] == [0, 1, 2, 3], "n=2 over 2 prompts: 4 choices in order: %r" % m)
        if st == 200:
            check(m["choices"][0]["text"] == m["choices"][1]["text"] == m["choices"][2]["text"],
                  "greedy samples of one prompt agree; ids of the same text give the same text")
            check(m["usage"]["completion_tokens"] == 20, "usage counts every choice")
        st, _, m = s.post("/v1/completions", {"prompt": "Blessed", "n": 3, "max_tokens": 8, "temperature": 1.0, "seed": 7})
        check(st == 200 and len(m["choices"]) == 3 and len({c["text"] for c in m["choices"]}) > 1, "n=3 sampled choices differ")

        # stop strings
        full = c1["choices"][0]["text"]
        word = full.split()[1] if len(full.split()) > 1 else full.strip()
        st, _, stopped = s.post("/v1/completions", dict(req, stop=[word]))
        t = stopped["choices"][0]["text"]
        check(st == 200 and word not in t and full.startswith(t) and stopped["choices"][0]["finish_reason"] == "stop",
              "stop string %r cuts %r -> %r" % (word, full, t))

        # echo
        st, _, e = s.post("/v1/completions", dict(req, echo=True))
        check(st == 200 and e["choices"][0]["text"] == "And God said" + full, "echo prepends the prompt")

        # logprobs: shape
        st, _, lp = s.post("/v1/completions", dict(req, logprobs=3, max_tokens=6))
        l = lp["choices"][0]["logprobs"] if st == 200 else None
        check(l is not None and len(l["tokens"]) == 6 and len(l["token_logprobs"]) == 6 and len(l["top_logprobs"]) == 6
              and len(l["text_offset"]) == 6 and all(len(t) <= 3 and t for t in l["top_logprobs"])
              and all(x <= 0 for x in l["token_logprobs"]) and "".join(l["tokens"]) == lp["choices"][0]["text"]
              and l["text_offset"][0] == 0, "logprobs shape: %r" % l)
        if l:  # greedy: the chosen token is the most likely one
            check(all(abs(max(t.values()) - x) < 1e-4 for t, x in zip(l["top_logprobs"], l["token_logprobs"])),
                  "greedy token has the top log-probability")

        # chat
        st, _, ch = s.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "You are the KJV."},
                                                                 {"role": "user", "content": "Who made the heaven?"}],
                                                    "max_tokens": 20, "temperature": 0})
        check(st == 200 and ch["object"] == "chat.completion" and ch["id"].startswith("chatcmpl-")
              and ch["choices"][0]["message"]["role"] == "assistant" and isinstance(ch["choices"][0]["message"]["content"], str)
              and ch["choices"][0]["finish_reason"] in ("stop", "length") and "\nUser:" not in ch["choices"][0]["message"]["content"],
              "chat: %r" % ch)
        # the template is used verbatim: the prompt token count is the template's
        check(ch["usage"]["prompt_tokens"] > 10, "chat prompt is the rendered template")
        st, _, chl = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4,
                                                     "logprobs": True, "top_logprobs": 2, "temperature": 0})
        check(st == 200 and chl["usage"]["completion_tokens"] <= 4 and len(chl["choices"][0]["logprobs"]["content"]) == chl["usage"]["completion_tokens"]
              and all(len(x["top_logprobs"]) == 2 for x in chl["choices"][0]["logprobs"]["content"]), "chat logprobs: %r" % chl)

        # a prompt of several KV blocks, twice: the second reuses the first's blocks
        long_prompt = "In the beginning God created the heaven and the earth. " * 4
        for _ in range(2):
            s.post("/generate", {"prompt": long_prompt, "max_tokens": 2})
        n_gen = 4

        # metrics moved by the right amounts
        after = s.metrics()
        check(metric(after, "qlm_requests_total", endpoint="/generate", status="200") - metric(before, "qlm_requests_total", endpoint="/generate", status="200") == n_gen,
              "qlm_requests_total{/generate,200} moved by 4")
        completions = 2 + 2 + 5 + 1 + 1 + 1 + 1 + 1  # the /v1/completions requests above
        check(metric(after, "qlm_requests_total", endpoint="/v1/completions", status="200") - metric(before, "qlm_requests_total", endpoint="/v1/completions", status="200") == completions,
              "qlm_requests_total{/v1/completions,200} moved by %d" % completions)
        d_prompt = metric(after, "qlm_prompt_tokens_total") - metric(before, "qlm_prompt_tokens_total")
        d_gen = metric(after, "qlm_generation_tokens_total") - metric(before, "qlm_generation_tokens_total")
        check(d_prompt > 0 and d_gen > 0, "token counters moved")
        # exact: one more request, and the counters move by its usage
        before = s.metrics()
        st, _, one = s.post("/v1/completions", {"prompt": "The LORD is my shepherd", "max_tokens": 7, "temperature": 0, "n": 2})
        after = s.metrics()
        check(metric(after, "qlm_prompt_tokens_total") - metric(before, "qlm_prompt_tokens_total") == one["usage"]["prompt_tokens"]
              and metric(after, "qlm_generation_tokens_total") - metric(before, "qlm_generation_tokens_total") == one["usage"]["completion_tokens"] == 14,
              "token counters move by the request's usage")
        check(metric(after, "qlm_time_to_first_token_seconds_count") - metric(before, "qlm_time_to_first_token_seconds_count") == 2,
              "TTFT histogram: one observation per choice")
        check(metric(after, "qlm_request_duration_seconds_count", endpoint="/v1/completions") - metric(before, "qlm_request_duration_seconds_count", endpoint="/v1/completions") == 1,
              "duration histogram counts the request")
        check(metric(after, "qlm_request_duration_seconds_bucket", endpoint="/v1/completions", le="+Inf") == metric(after, "qlm_request_duration_seconds_count", endpoint="/v1/completions"),
              "+Inf bucket == count")
        for name in ["qlm_errors_total", "qlm_prefix_cache_hits_total", "qlm_preemptions_total", "qlm_requests_running", "qlm_requests_waiting",
                     "qlm_kv_cache_usage_ratio", "qlm_busy_ratio", "qlm_build_info", "process_start_time_seconds",
                     "qlm_time_per_output_token_seconds_count"]:
            check(any(k[0] == name for k in after) or name == "qlm_errors_total", "metric %s exported" % name)
        check(0 <= metric(after, "qlm_busy_ratio") <= 1 and 0 <= metric(after, "qlm_kv_cache_usage_ratio") <= 1, "ratios in [0, 1]")
        check(metric(after, "qlm_prefix_cache_hits_total") > 0, "repeated prompts hit the prefix cache")
        _, h, _ = s.request("GET", "/metrics")
        check(h.get("content-type", "").startswith("text/plain; version=0.0.4"), "metrics content type")

        # the log: one JSON line per request with the contract's fields
        lines = [json.loads(x) for x in s.log_text().splitlines() if x.startswith("{")]
        reqs = [x for x in lines if "endpoint" in x]
        check(len(reqs) >= 20 and all({"ts", "id", "endpoint", "status", "prompt_tokens", "completion_tokens", "ttft_s", "duration_s"} <= set(x) for x in reqs),
              "JSON log lines")
        last_gen = [x for x in reqs if x["endpoint"] == "/v1/completions"][-1]
        check(last_gen["completion_tokens"] == 14 and last_gen["ttft_s"] > 0 and last_gen["status"] == 200, "log line of a completion: %r" % last_gen)


def part_errors():
    with Server("--threads", "1", "--model", MODEL, "--max-body-bytes", "4096") as s:
        before = s.metrics()
        bad = [
            ("/v1/completions", b"{not json", None),
            ("/v1/completions", b"", None),
            ("/v1/completions", b"[1,2]", None),
            ("/v1/completions", {"max_tokens": 3}, "prompt"),
            ("/v1/completions", {"prompt": "x", "max_tokens": "3"}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "temperature": 2.5}, "temperature"),
            ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
            ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
            ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
            ("/v1/completions", {"prompt": "x", "n": 1000}, "n"),
            ("/v1/completions", {"prompt": "x", "stop": 5}, "stop"),
            ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
            ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
            ("/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
            ("/v1/completions", {"prompt": "x", "logit_bias": {"50257": 1}}, "logit_bias"),
            ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias.5"),
            ("/v1/completions", {"prompt": "x", "frobnicate": 1}, "frobnicate"),
            ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
            ("/v1/completions", {"prompt": "x", "best_of": 3}, "best_of"),
            ("/v1/completions", {"prompt": "x", "n": 2, "best_of": 1}, "best_of"),
            ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
            ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
            ("/v1/completions", {"prompt": [1, -2]}, "prompt[1]"),
            ("/v1/completions", {"prompt": [1, 99999]}, "prompt[1]"),
            ("/v1/completions", {"prompt": [[1], "a", 3]}, "prompt[2]"),
            ("/v1/completions", {"prompt": ""}, "prompt"),
            ("/v1/completions", {"prompt": "x", "seed": "1"}, "seed"),
            ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
            ("/v1/completions", {"prompt": "word " * 300}, "prompt"),
            ("/v1/completions", {"prompt": "x", "max_tokens": 300}, "max_tokens"),
            ("/v1/chat/completions", {"messages": []}, "messages"),
            ("/v1/chat/completions", {"messages": "hi"}, "messages"),
            ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
            ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0].extra"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "prompt"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
            ("/generate", {"prompt": "x", "n": 2}, "n"),
            ("/generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
            ("/generate", {"prompt": "x", "top_k": -1}, "top_k"),
            ("/generate", {}, "prompt"),
        ]
        for path, body, param in bad:
            st, _, b = s.post(path, body)
            check(st == 400 and is_error_body(b, param) and (param is None or b["error"]["type"] == "invalid_request_error"),
                  "%s %r -> 400 naming %r: %s %r" % (path, body if len(repr(body)) < 80 else repr(body)[:80], param, st, b))
        st, _, b = s.post("/v1/completions", {"prompt": "word " * 300})
        check("context" in b["error"]["message"], "a too-long prompt says so: %r" % b)
        # NaN / Infinity literals are not JSON
        for raw in [b'{"prompt":"x","temperature":NaN}', b'{"prompt":"x","temperature":Infinity}', b'{"prompt":"x","max_tokens":1e999}']:
            st, _, b = s.post("/v1/completions", raw)
            check(st == 400 and is_error_body(b), "%r -> 400" % raw)
        st, _, b = s.post("/v1/completions", b"[" * 2000 + b"]" * 2000)
        check(st == 400 and is_error_body(b), "deep nesting -> 400")
        # routes and methods
        st, h, b = s.json("GET", "/v1/nothing")
        check(st == 404 and is_error_body(b), "unknown route 404")
        st, h, b = s.json("GET", "/v1/completions")
        check(st == 405 and h.get("allow") == "POST" and is_error_body(b), "GET /v1/completions -> 405 Allow: POST")
        st, h, b = s.json("DELETE", "/health")
        check(st == 405 and h.get("allow") == "GET" and is_error_body(b), "DELETE /health -> 405 Allow: GET")
        # body limit
        st, h, b = s.post("/v1/completions", {"prompt": "x" * 5000})
        check(st == 413 and is_error_body(b), "a body over --max-body-bytes -> 413: %s %r" % (st, b))
        after = s.metrics()
        check(metric(after, "qlm_errors_total", kind="bad_request") - metric(before, "qlm_errors_total", kind="bad_request") >= len(bad) + 4,
              "qlm_errors_total{bad_request} counts the 400s")
        check(metric(after, "qlm_requests_total", endpoint="/v1/completions", status="413") >= 1, "qlm_requests_total counts the 413")
        st, _, b = s.json("GET", "/health")
        check(st == 200, "alive after the bad requests")

    # API keys: flag and environment
    with Server("--threads", "1", "--model", MODEL, "--api-key", "sekrit-1", env={"QLM_API_KEYS": "other-2, third-3"}) as s:
        body = {"prompt": "x", "max_tokens": 2}
        st, h, b = s.post("/v1/completions", body)
        check(st == 401 and is_error_body(b) and b["error"]["type"] == "authentication_error", "no key -> 401")
        for wrong in ["Bearer sekrit-2", "Bearer sekrit-1x", "Bearer ", "Basic sekrit-1", "sekrit-1"]:
            st, _, b = s.post("/v1/completions", body, {"Authorization": wrong})
            check(st == 401 and is_error_body(b), "%r -> 401" % wrong)
        for good in ["Bearer sekrit-1", "Bearer other-2", "bearer third-3"]:
            st, _, b = s.post("/v1/completions", body, {"Authorization": good})
            check(st == 200, "%r -> 200 (%s)" % (good, st))
        st, _, b = s.json("GET", "/v1/models")
        check(st == 401, "/v1/models needs a key")
        for open_path in ["/health", "/ready", "/metrics"]:
            check(s.request("GET", open_path)[0] == 200, "%s needs no key" % open_path)

    # rate limit: 2 at once, then 1 a second
    with Server("--threads", "1", "--model", MODEL, "--rate-limit", "1", "--rate-burst", "2", "--api-key", "k1", "--api-key", "k2") as s:
        body = {"prompt": "x", "max_tokens": 1}
        k1 = {"Authorization": "Bearer k1"}
        codes = [s.post("/v1/completions", body, k1)[0] for _ in range(3)]
        check(codes[:2] == [200, 200] and codes[2] == 429, "rate limit: burst 2 then 429: %r" % codes)
        st, h, b = s.post("/v1/completions", body, k1)
        check(st == 429 and is_error_body(b) and int(h.get("retry-after", "0")) >= 1, "429 carries Retry-After")
        check(s.post("/v1/completions", body, {"Authorization": "Bearer k2"})[0] == 200, "another key has its own bucket")
        time.sleep(1.1)
        check(s.post("/v1/completions", body, k1)[0] == 200, "the bucket refills")

    # random weights: no tokenizer, token ids only
    with Server("--threads", "1", "--shape", "tiny", "--method", "w8a8") as s:
        st, _, b = s.post("/v1/completions", {"prompt": "hello"})
        check(st == 400 and is_error_body(b, "prompt"), "text prompt without a tokenizer -> 400")
        st, _, b = s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0})
        check(st == 200 and b["usage"]["completion_tokens"] == 4, "token ids work without a tokenizer: %r" % b)
        st, _, b = s.json("GET", "/v1/models")
        check(b["data"][0]["id"] == "gpt2-tiny-random-w8a8", "served name of random weights")


NO_EOS = {"50256": -100}  # random weights would end a request at a random EOS


def slow_server(*extra):
    # GPT-2 124M random weights on one thread: tens of ms a token, slow enough to catch requests in flight.
    return Server("--threads", "1", "--shape", "124m", "--kv-cache-bytes", str(256 << 20), *extra)


def part_streaming():
    with Server("--threads", "1", "--model", MODEL) as s:
        req = {"prompt": "And the earth was", "max_tokens": 24, "temperature": 0}
        whole = s.post("/v1/completions", req)[2]
        events = stream(s, "/v1/completions", dict(req, stream=True, stream_options={"include_usage": True}))
        check(events[-1] == "[DONE]", "stream ends with [DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        check(text == whole["choices"][0]["text"], "streamed deltas concatenate to the greedy text: %r vs %r" % (text, whole["choices"][0]["text"]))
        check(all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks), "chunk ids and objects")
        finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        check(finals == ["length"], "one finish_reason: %r" % finals)
        check(chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"], "include_usage chunk: %r" % chunks[-1])
        check(len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) > 3, "text arrives in several events")
        # n = 2, streamed: both indexes
        events = stream(s, "/v1/completions", dict(req, stream=True, n=2))
        by_index = {}
        for e in events[:-1]:
            for ch in json.loads(e)["choices"]:
                by_index[ch["index"]] = by_index.get(ch["index"], "") + ch["text"]
        check(by_index == {0: whole["choices"][0]["text"], 1: whole["choices"][0]["text"]}, "streamed n=2: %r" % by_index)
        # chat, streamed
        chat = {"messages": [{"role": "user", "content": "Where was Moses?"}], "max_tokens": 16, "temperature": 0}
        whole_chat = s.post("/v1/chat/completions", chat)[2]
        events = stream(s, "/v1/chat/completions", dict(chat, stream=True))
        chunks = [json.loads(e) for e in events[:-1]]
        check(events[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"].get("role") == "assistant"
              and all(c["object"] == "chat.completion.chunk" for c in chunks), "chat stream shape")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        check(text == whole_chat["choices"][0]["message"]["content"], "chat stream text == chat text")
        # echo, streamed
        events = stream(s, "/v1/completions", dict(req, stream=True, echo=True))
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        check(text == req["prompt"] + whole["choices"][0]["text"], "echo streamed")
        # logprobs, streamed
        events = stream(s, "/v1/completions", dict(req, stream=True, logprobs=2))
        toks = sum(((json.loads(e)["choices"][0]["logprobs"] or {"tokens": []})["tokens"] for e in events[:-1]), [])
        check(len(toks) == 24, "streamed logprobs: one entry a token (%d)" % len(toks))
    # Random weights, no tokenizer: token-id prompts only, one event a token, logprobs counted once.
    with Server("--threads", "1", "--shape", "tiny", "--method", "fp32") as s:
        req = {"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0}
        status, _, whole = s.post("/v1/completions", req)
        check(status == 200, "token-id prompt without a tokenizer: %r" % (whole,))
        n = whole["usage"]["completion_tokens"]
        for logprobs in (None, 0, 2):
            body = dict(req, stream=True) if logprobs is None else dict(req, stream=True, logprobs=logprobs)
            events = stream(s, "/v1/completions", body)
            chunks = [json.loads(e) for e in events[:-1]]
            per_token = [c for c in chunks if c["choices"] and not c["choices"][0]["finish_reason"]]
            # An event carries the tokens generated since the last one (often one, several if the client lags).
            check(1 <= len(per_token) <= n, "no tokenizer, logprobs %r: %d events for %d tokens" % (logprobs, len(per_token), n))
            if logprobs is not None:
                lp = sum((c["choices"][0]["logprobs"]["token_logprobs"] for c in per_token), [])
                check(len(lp) == n and all(v <= 0.0 for v in lp), "no tokenizer, logprobs %r: one log-probability a token: %r" % (logprobs, lp))
        status, _, body = s.post("/v1/completions", {"prompt": "text", "max_tokens": 2})
        check(status == 400 and is_error_body(body), "a text prompt without a tokenizer is a 400: %r" % (body,))



def part_lifecycle():
    # One slow server for disconnects, timeouts, the bounded queue and the drain (each start of GPT-2
    # 124M costs seconds of CI). One sequence at a time: a second one waits, a third gets 429.
    with slow_server("--max-running", "1", "--max-queue", "1", "--request-timeout", "4", "--drain-timeout", "30") as s:
        # cancellation on disconnect: open a long stream, read one event, close the socket
        sock = socket.create_connection((s.host, s.port), timeout=TIMEOUT)
        body = json.dumps({"prompt": list(range(1, 9)), "max_tokens": 900, "stream": True, "temperature": 0, "logit_bias": NO_EOS})
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body)).encode())
        got = b""
        while got.count(b"data: ") < 2:
            data = sock.recv(4096)
            if not data:
                break
            got += data
        check(b"200 OK" in got and got.count(b"data: ") >= 2, "long stream started")
        running = wait_until(lambda: metric(s.metrics(), "qlm_requests_running") == 1, 10)
        check(running, "the stream's request runs")
        sock.close()
        freed = wait_until(lambda: (lambda m: metric(m, "qlm_requests_running") == 0 and metric(m, "qlm_kv_cache_usage_ratio") == 0)(s.metrics()), 10)
        check(freed, "a disconnected stream is cancelled and its KV blocks freed")
        check(wait_until(lambda: metric(s.metrics(), "qlm_errors_total", kind="client_disconnected") == 1, 5), "the disconnect is counted")
        # per-request timeout: 504 with an error body, and the request is cancelled
        t0 = time.monotonic()
        st, _, b = s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 900, "temperature": 0, "logit_bias": NO_EOS})
        took = time.monotonic() - t0
        check(st == 504 and is_error_body(b) and 3.5 < took < 15, "per-request timeout -> 504 after ~4 s (%s, %.1f s)" % (st, took))
        check(wait_until(lambda: metric(s.metrics(), "qlm_requests_running") == 0, 10), "the timed-out request was cancelled")
        events = stream(s, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 900, "stream": True, "logit_bias": NO_EOS})
        check(events[-1] == "[DONE]" and "error" in json.loads(events[-2]), "a timed-out stream ends with an error event and [DONE]")
        # the log line (and its count) follows the last byte the client read
        check(wait_until(lambda: metric(s.metrics(), "qlm_errors_total", kind="timeout") == 2, 5), "timeouts counted")

        # token counts that take about a second here (sanitizer builds are many times slower)
        t0 = time.monotonic()
        s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 5, "temperature": 0, "logit_bias": NO_EOS})
        per_token = (time.monotonic() - t0) / 5
        short = max(3, min(60, int(1.2 / per_token)))
        print("slow server: %.0f ms a token; requests of %d tokens" % (1e3 * per_token, short), flush=True)

        # bounded queue: one running, one waiting, the rest 429 with Retry-After
        results = []
        lock = threading.Lock()

        def one():
            r = s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": short, "temperature": 0, "logit_bias": NO_EOS})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        wait_until(lambda: metric(s.metrics(), "qlm_requests_waiting") >= 1, 10)
        st, h, b = s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2})
        check(st == 429 and h.get("retry-after") == "1" and is_error_body(b), "queue full -> 429 Retry-After: 1 (%s %r)" % (st, b))
        st, _, _ = s.json("GET", "/ready")
        check(st == 503, "/ready is 503 while the queue is full")
        for t in threads:
            t.join(60)
        check(sorted(r[0] for r in results) == [200, 200], "the running and the waiting request complete: %r" % [r[0] for r in results])
        check(s.json("GET", "/ready")[0] == 200, "/ready is 200 again")

        # SIGTERM drain: the request in flight finishes, /ready 503, new requests 503, exit 0
        long_result = []
        t = threading.Thread(target=lambda: long_result.append(s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2 * short, "temperature": 0, "logit_bias": NO_EOS}, timeout=60)))
        t.start()
        check(wait_until(lambda: metric(s.metrics(), "qlm_requests_running") == 1, 10), "long request running")
        s.proc.send_signal(signal.SIGTERM)
        t_sig = time.monotonic()
        check(wait_until(lambda: s.request("GET", "/ready")[0] == 503, 5), "/ready turns 503 on SIGTERM")
        st, _, b = s.post("/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
        check(st == 503 and is_error_body(b), "new requests get 503 while draining (%s)" % st)
        check(s.request("GET", "/health")[0] == 200, "/health stays 200 while draining")
        t.join(60)
        check(long_result and long_result[0][0] == 200 and long_result[0][2]["usage"]["completion_tokens"] == 2 * short,
              "the request in flight completed: %r" % (long_result[0][:1] if long_result else None))
        try:
            rc = s.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0 and time.monotonic() - t_sig < 30, "exit 0 after the drain (rc %r)" % rc)

    # drain deadline: a request that cannot finish in time is cancelled, the server still exits 0
    with slow_server("--drain-timeout", "1") as s:
        res = []
        t = threading.Thread(target=lambda: res.append(s.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 900, "logit_bias": NO_EOS}, timeout=60)))
        t.start()
        check(wait_until(lambda: metric(s.metrics(), "qlm_requests_running") == 1, 10), "long request running")
        s.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        t.join(30)
        try:
            rc = s.proc.wait(20)
        except subprocess.TimeoutExpired:
            rc = None
        check(res and res[0][0] == 503 and is_error_body(res[0][2]), "past the drain deadline the request gets 503: %r" % (res[0][:1] if res else None))
        check(rc == 0 and time.monotonic() - t0 < 10, "exit 0 soon after the drain deadline (rc %r)" % rc)

    # SIGINT drains too; bad options fail cleanly
    with Server("--threads", "1", "--model", MODEL) as s:
        check(s.stop(signal.SIGINT) == 0, "SIGINT: exit 0")
    for args in (["--port", "70000"], ["--max-queue", "0"], ["--bogus", "1"], ["--shape", "huge"], ["--model", "/nonexistent"]):
        p = subprocess.run([BIN, *args], capture_output=True, timeout=60)
        check(p.returncode == 1 and b"qlm-serve: error:" in p.stderr, "bad option %r -> exit 1 with a message" % args)


def main():
    parts = {"api": part_api, "errors": part_errors, "streaming": part_streaming, "lifecycle": part_lifecycle}
    for name in PARTS:
        t0 = time.monotonic()
        try:
            parts[name]()
        except Exception as e:  # a crash of the test is a failure too
            import traceback
            traceback.print_exc()
            failures.append("%s: %r" % (name, e))
        print("part %s: %.1f s" % (name, time.monotonic() - t0), flush=True)
    if failures:
        print("%d failed checks" % len(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
