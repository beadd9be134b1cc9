#!/usr/bin/env node
// Load test of an OpenAI-compatible completions server (qlm-serve): N concurrent clients, each
// sending R streaming /v1/completions requests one after another, prompts from a fixed-seed
// generator. Counts failed requests (non-200, network errors, error events, time-outs) and
// truncated ones (no [DONE], no finish_reason, no usage, fewer streamed tokens than usage says,
// fewer tokens than max_tokens when finish_reason is "length"), and prints the aggregate
// throughput, TTFT and inter-token latency percentiles (from the arrival times of the server-sent
// events). Exit status 0 only with zero failed and zero truncated requests. Node 18 or later, no
// dependencies (the built-in fetch). docs/clients.md.
//
//   node tools/loadtest.mjs --url http://127.0.0.1:8000 --clients 128 --requests 3 --max-tokens 64
//   node tools/loadtest.mjs --url ... --prompt-ids --vocab 50257   # models without a tokenizer
import { setMaxListeners } from 'node:events';
import { writeFileSync } from 'node:fs';

const usage = `usage: node tools/loadtest.mjs --url http://HOST:PORT [options]
  --url URL             the server (its /v1/completions and /v1/models)
  --clients N           concurrent clients (default 128)
  --requests R          requests each client sends, one after another (default 3)
  --max-tokens T        max_tokens of every request (default 32)
  --prompt-min A        shortest prompt, in words (text) or tokens (--prompt-ids) (default 8)
  --prompt-max B        longest prompt (default 32)
  --prompt-ids          token-id prompts (for a model without a tokenizer)
  --vocab V             with --prompt-ids: ids drawn from 0..V-2 (default 50257; V-1 is GPT-2's EOS)
  --temperature X       default 0.8 (each request has its own seed, so runs repeat)
  --seed S              the prompt generator's and the requests' seeds (default 1)
  --model NAME          the "model" field (default: the first id of GET /v1/models)
  --api-key KEY         sent as "Authorization: Bearer KEY" (default: env QLM_API_KEY)
  --no-logprobs         do not ask for logprobs: 0 (then streamed tokens are not counted one by
                        one: an event counts as one token for TTFT / ITL, and only usage is checked)
  --ramp-up S           client c starts at c/N x S seconds instead of all at once (default 0)
  --request-timeout S   a request not finished after S seconds fails (default 120)
  --deadline S          the whole run is aborted after S seconds, its unfinished requests fail (default 600)
  --json FILE           write the summary as JSON
  --quiet               print only the summary`;

function parseArgs(argv) {
  const flags = new Set(['prompt-ids', 'no-logprobs', 'quiet', 'help']);
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument '${arg}'`);
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    if (flags.has(name)) {
      o[name] = true;
    } else if (eq > 0) {
      o[name] = arg.slice(eq + 1);
    } else {
      if (i + 1 >= argv.length) throw new Error(`option --${name} needs a value`);
      o[name] = argv[++i];
    }
  }
  return o;
}

function number(o, name, fallback, { integer = false, min = -Infinity } = {}) {
  if (o[name] === undefined) return fallback;
  const v = Number(o[name]);
  if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min)
    throw new Error(`option --${name}: '${o[name]}' is not ${integer ? 'an integer' : 'a number'} >= ${min}`);
  return v;
}

// mulberry32: a small fixed-seed generator, so the same options send the same prompts.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const words = ('and the lord said unto moses behold i will send thee a land that floweth with milk and honey ' +
  'in the beginning god created heaven earth was without form void darkness upon face of deep spirit moved ' +
  'waters let there be light saw it good divided day night evening morning first second king israel people ' +
  'house david jerusalem city gate law word spake children went forth came out against them men women').split(' ');

function makePrompt(random, options) {
  const length = options.promptMin + Math.floor(random() * (options.promptMax - options.promptMin + 1));
  if (options.promptIds) return Array.from({ length }, () => Math.floor(random() * (options.vocab - 1)));
  const text = Array.from({ length }, () => words[Math.floor(random() * words.length)]).join(' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// AbortSignal.any is Node >= 20.3; Debian 12's nodejs is 18.
function anySignal(signals) {
  const controller = new AbortController();
  for (const s of signals) {
    if (s.aborted) { controller.abort(s.reason); break; }
    s.addEventListener('abort', () => controller.abort(s.reason), { once: true });
  }
  return controller.signal;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));  // nearest rank
  return sorted[rank];
}

function summary(values) {
  const s = Float64Array.from(values).sort();
  return { count: s.length, p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), max: s.length ? s[s.length - 1] : null };
}

// One streaming request: parses the server-sent events as they arrive and times them.
async function streamCompletion(options, prompt, seed, signal) {
  const r = { ok: false, status: 0, failure: null, truncation: null, ttft: null, gaps: [], streamedTokens: 0, completionTokens: 0 };
  const body = {
    model: options.model, prompt, max_tokens: options.maxTokens, temperature: options.temperature, seed,
    stream: true, stream_options: { include_usage: true },
  };
  if (options.logprobs) body.logprobs = 0;
  const headers = { 'content-type': 'application/json' };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
  const start = performance.now();
  let response;
  try {
    response = await fetch(`${options.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body), signal });
  } catch (e) {
    r.failure = `network: ${e.cause?.code ?? e.name}: ${e.cause?.message ?? e.message}`;
    return r;
  }
  r.status = response.status;
  if (response.status !== 200) {
    const text = await response.text().catch(() => '');
    r.failure = `HTTP ${response.status}: ${text.slice(0, 200)}`;
    return r;
  }
  let buffer = '', done = false, finishReason = null, usage = null, last = null;
  const decoder = new TextDecoder();
  const onEvent = (data, now) => {
    if (data === '[DONE]') { done = true; return; }
    const event = JSON.parse(data);
    if (event.error) throw new Error(`error event: ${JSON.stringify(event.error).slice(0, 200)}`);
    if (event.usage) usage = event.usage;
    for (const choice of event.choices ?? []) {
      // Tokens this event carries: one a logprobs entry; without logprobs, an event is taken for one
      // token when it has text or, for token-id prompts (a model without a tokenizer streams empty
      // text), when it is not the final event of its choice.
      const tokens = options.logprobs ? (choice.logprobs?.tokens?.length ?? 0)
        : choice.text || (options.promptIds && !choice.finish_reason) ? 1 : 0;
      if (tokens > 0) {
        if (r.ttft === null) r.ttft = (now - start) / 1000;
        // The gap since the previous event, shared by the tokens this one brought.
        else for (let k = 0; k < tokens; k++) r.gaps.push((now - last) / 1000 / tokens);
        last = now;
        r.streamedTokens += tokens;
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  };
  try {
    for await (const bytes of response.body) {
      const now = performance.now();
      buffer += decoder.decode(bytes, { stream: true });
      for (let end; (end = buffer.indexOf('\n\n')) >= 0;) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of block.split('\n')) if (line.startsWith('data: ')) onEvent(line.slice(6), now);
      }
    }
  } catch (e) {
    r.failure = e.name === 'AbortError' || e.name === 'TimeoutError' ? `timed out after ${((performance.now() - start) / 1000).toFixed(1)} s`
      : e.message.startsWith('error event') ? e.message : `stream: ${e.cause?.code ?? e.name}: ${e.message}`;
    return r;
  }
  r.seconds = (performance.now() - start) / 1000;
  r.completionTokens = usage?.completion_tokens ?? 0;
  if (!done) r.truncation = 'no [DONE]';
  else if (!finishReason) r.truncation = 'no finish_reason';
  else if (!usage) r.truncation = 'no usage chunk';
  else if (options.logprobs && r.streamedTokens !== usage.completion_tokens)
    r.truncation = `${r.streamedTokens} tokens streamed, usage says ${usage.completion_tokens}`;
  else if (finishReason === 'length' && usage.completion_tokens !== options.maxTokens)
    r.truncation = `finish_reason length after ${usage.completion_tokens} of max_tokens ${options.maxTokens}`;
  else if (!options.logprobs && usage.completion_tokens > 0 && r.streamedTokens === 0)
    r.truncation = `usage says ${usage.completion_tokens} tokens, nothing streamed`;
  r.ok = r.truncation === null;
  return r;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) { console.log(usage); return 0; }
  const known = new Set(['url', 'clients', 'requests', 'max-tokens', 'prompt-min', 'prompt-max', 'prompt-ids', 'vocab', 'temperature', 'seed',
    'model', 'api-key', 'no-logprobs', 'ramp-up', 'request-timeout', 'deadline', 'json', 'quiet', 'help']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw new Error(`unknown option --${k}`);
  if (!o.url) throw new Error('--url is required (e.g. http://127.0.0.1:8000)');
  const options = {
    url: o.url.replace(/\/+$/, ''),
    clients: number(o, 'clients', 128, { integer: true, min: 1 }),
    requests: number(o, 'requests', 3, { integer: true, min: 1 }),
    maxTokens: number(o, 'max-tokens', 32, { integer: true, min: 1 }),
    promptMin: number(o, 'prompt-min', 8, { integer: true, min: 1 }),
    promptMax: number(o, 'prompt-max', 32, { integer: true, min: 1 }),
    promptIds: Boolean(o['prompt-ids']),
    vocab: number(o, 'vocab', 50257, { integer: true, min: 2 }),
    temperature: number(o, 'temperature', 0.8, { min: 0 }),
    seed: number(o, 'seed', 1, { integer: true, min: 0 }),
    apiKey: o['api-key'] ?? process.env.QLM_API_KEY,
    logprobs: !o['no-logprobs'],
    rampUp: number(o, 'ramp-up', 0, { min: 0 }),
    requestTimeout: number(o, 'request-timeout', 120, { min: 0.001 }),
    deadline: number(o, 'deadline', 600, { min: 0.001 }),
    quiet: Boolean(o.quiet),
  };
  if (options.promptMax < options.promptMin) throw new Error('--prompt-max must be >= --prompt-min');

  const deadline = AbortSignal.timeout(options.deadline * 1000);
  setMaxListeners(0, deadline);  // every request listens to it
  options.model = o.model;
  if (!options.model) {
    const headers = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {};
    const res = await fetch(`${options.url}/v1/models`, { headers, signal: anySignal([deadline, AbortSignal.timeout(30_000)]) });
    if (res.status !== 200) throw new Error(`GET /v1/models: HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
    options.model = (await res.json()).data?.[0]?.id;
    if (!options.model) throw new Error('GET /v1/models listed no model');
  }

  // Every prompt and seed is fixed before the clock starts: client c's request k is request c * R + k.
  const random = rng(options.seed);
  const prompts = Array.from({ length: options.clients * options.requests }, () => makePrompt(random, options));
  if (!options.quiet)
    console.log(`loadtest: ${options.url}, model ${options.model}: ${options.clients} clients x ${options.requests} requests, ` +
      `prompts ${options.promptMin}..${options.promptMax} ${options.promptIds ? 'token ids' : 'words'}, max_tokens ${options.maxTokens}, ` +
      `temperature ${options.temperature}, streaming${options.logprobs ? ', logprobs 0' : ''}` +
      (options.rampUp > 0 ? `, clients starting over ${options.rampUp} s` : ''));

  const results = [];
  const failures = new Map(), truncations = new Map();
  const start = performance.now();
  const client = async (c) => {
    if (options.rampUp > 0) await new Promise((resolve) => setTimeout(resolve, (c / options.clients) * options.rampUp * 1000));
    for (let k = 0; k < options.requests; k++) {
      const index = c * options.requests + k;
      const signal = anySignal([deadline, AbortSignal.timeout(options.requestTimeout * 1000)]);
      const r = await streamCompletion(options, prompts[index], options.seed * 1_000_003 + index, signal);
      results.push(r);
      if (r.failure) failures.set(r.failure, (failures.get(r.failure) ?? 0) + 1);
      if (r.truncation) truncations.set(r.truncation, (truncations.get(r.truncation) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: options.clients }, (_, c) => client(c)));
  const seconds = (performance.now() - start) / 1000;

  const good = results.filter((r) => r.ok);
  const generated = good.reduce((n, r) => n + r.completionTokens, 0);
  const failed = results.filter((r) => r.failure).length;
  const truncated = results.filter((r) => r.truncation).length;
  const toMs = (s) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, k === 'count' || v === null ? v : v * 1000]));
  const out = {
    url: options.url, model: options.model, clients: options.clients, requests_per_client: options.requests,
    max_tokens: options.maxTokens, prompt_min: options.promptMin, prompt_max: options.promptMax, prompt_ids: options.promptIds,
    temperature: options.temperature, logprobs: options.logprobs, seed: options.seed, ramp_up_seconds: options.rampUp,
    requests: results.length, succeeded: good.length, failed, truncated,
    failures: Object.fromEntries(failures), truncations: Object.fromEntries(truncations),
    seconds, generated_tokens: generated,
    tokens_per_second: generated / seconds, requests_per_second: good.length / seconds,
    ttft_ms: toMs(summary(results.filter((r) => r.ttft !== null).map((r) => r.ttft))),
    itl_ms: toMs(summary(good.flatMap((r) => r.gaps))),
    request_seconds: summary(good.map((r) => r.seconds)),
  };
  const f = (v, d = 1) => (v === null ? '-' : v.toFixed(d));
  console.log(`requests: ${out.requests} sent, ${out.succeeded} complete, ${failed} failed, ${truncated} truncated in ${f(seconds, 2)} s`);
  console.log(`throughput: ${f(out.tokens_per_second)} generated tokens/s, ${f(out.requests_per_second, 2)} requests/s (${generated} tokens)`);
  console.log(`TTFT ms: p50 ${f(out.ttft_ms.p50)}  p95 ${f(out.ttft_ms.p95)}  p99 ${f(out.ttft_ms.p99)}  max ${f(out.ttft_ms.max)}`);
  console.log(`ITL ms:  p50 ${f(out.itl_ms.p50, 2)}  p95 ${f(out.itl_ms.p95, 2)}  p99 ${f(out.itl_ms.p99, 2)}  (${out.itl_ms.count} gaps)`);
  for (const [what, n] of failures) console.log(`failed (${n}x): ${what}`);
  for (const [what, n] of truncations) console.log(`truncated (${n}x): ${what}`);
  if (o.json) writeFileSync(o.json, JSON.stringify(out, null, 2) + '\n');
  return failed === 0 && truncated === 0 ? 0 : 1;
}

main().then((code) => process.exit(code), (e) => {
  console.error(`loadtest: error: ${e.message}`);
  process.exit(2);
});
