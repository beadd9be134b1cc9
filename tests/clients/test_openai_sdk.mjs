// The official OpenAI SDK (npm "openai", the version pinned in package.json) against qlm-serve,
// pointed at it with baseURL as a user would: completions and chat, streamed and not, n, stop,
// seed, max_tokens, models.list, a 400 surfaced as APIError with the OpenAI error body, and API
// keys (401 -> AuthenticationError). Starts the server itself on a free port of 127.0.0.1 and stops
// it on every way out. Run by run-openai-sdk-test.sh, which installs the SDK next to this file.
// usage: node test_openai_sdk.mjs QLM_SERVE_BINARY [extra qlm-serve options...]
import OpenAI from 'openai';
import { VERSION as sdkVersion } from 'openai/version';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';

const [binary, ...extraArgs] = process.argv.slice(2);
if (!binary) {
  console.error('usage: node test_openai_sdk.mjs QLM_SERVE_BINARY [qlm-serve options...]');
  process.exit(2);
}
const apiKey = 'sdk-test-key-' + process.pid;
const testDeadlineMs = 150_000;  // well inside CTest's TIMEOUT, so the server is always stopped by us

let server = null;
let serverLog = '';
function stopServer() {
  if (server && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
}
process.on('exit', stopServer);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { stopServer(); process.exit(1); });
const watchdog = setTimeout(() => {
  console.error(`test_openai_sdk: still running after ${testDeadlineMs / 1000} s: giving up`);
  stopServer();
  process.exit(1);
}, testDeadlineMs);
watchdog.unref();

// Starts qlm-serve and resolves with its port once it printed its listening line.
function startServer() {
  const args = ['--port', '0', '--threads', '1', '--api-key', apiKey, ...extraArgs];
  server = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  server.stderr.on('data', (d) => { serverLog = (serverLog + d).slice(-20_000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('qlm-serve printed no listening line within 60 s')), 60_000);
    server.on('error', (e) => { clearTimeout(timer); reject(e); });
    server.on('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`qlm-serve exited (${code ?? signal}) before listening`)); });
    createInterface({ input: server.stdout }).on('line', (line) => {
      const m = /^qlm-serve: listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
  });
}

const results = [];
async function check(name, body) {
  const start = performance.now();
  await body();
  results.push(name);
  console.log(`ok  ${name} (${((performance.now() - start) / 1000).toFixed(2)} s)`);
}

async function expectApiError(promise, ErrorType, status) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an OpenAI.APIError, got ${e?.constructor?.name}: ${e?.message}`);
    assert.ok(e instanceof ErrorType, `expected ${ErrorType.name}, got ${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, status);
    return e;
  }
  assert.fail(`expected ${ErrorType.name} (${status}), the request succeeded`);
}

async function collect(stream) {
  const out = { text: [], finish: [], usage: null, chunks: 0 };
  for await (const chunk of stream) {
    out.chunks++;
    if (chunk.usage) out.usage = chunk.usage;
    for (const c of chunk.choices) {
      out.text[c.index] = (out.text[c.index] ?? '') + (c.text ?? c.delta?.content ?? '');
      if (c.finish_reason) out.finish[c.index] = c.finish_reason;
    }
  }
  return out;
}

const port = await startServer();
const baseURL = `http://127.0.0.1:${port}/v1`;
const client = new OpenAI({ baseURL, apiKey, timeout: 60_000, maxRetries: 0 });
console.log(`qlm-serve on ${baseURL}, openai SDK ${sdkVersion}`);

try {
  let model;
  await check('models.list', async () => {
    const models = [];
    for await (const m of client.models.list()) models.push(m);
    assert.equal(models.length, 1);
    assert.equal(models[0].object, 'model');
    assert.equal(typeof models[0].id, 'string');
    model = models[0].id;
  });

  const prompt = 'And the LORD said unto Moses,';
  let greedy;
  await check('completions: greedy twice gives the same text; usage adds up', async () => {
    const a = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
    const b = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
    assert.equal(a.object, 'text_completion');
    assert.equal(a.model, model);
    assert.equal(a.choices.length, 1);
    assert.equal(typeof a.choices[0].text, 'string');
    assert.ok(a.choices[0].text.length > 0, 'generated some text');
    assert.equal(b.choices[0].text, a.choices[0].text);
    assert.ok(['length', 'stop'].includes(a.choices[0].finish_reason));
    assert.ok(a.usage.prompt_tokens > 0);
    assert.ok(a.usage.completion_tokens >= 1 && a.usage.completion_tokens <= 24);
    if (a.choices[0].finish_reason === 'length') assert.equal(a.usage.completion_tokens, 24);
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
    greedy = a;
  });

  await check('completions: max_tokens is respected', async () => {
    const r = await client.completions.create({ model, prompt, max_tokens: 5, temperature: 0 });
    assert.ok(r.usage.completion_tokens <= 5);
    if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 5);
    assert.ok(greedy.choices[0].text.startsWith(r.choices[0].text), 'a shorter greedy run is a prefix of the longer one');
  });

  await check('completions: n = 2 gives two choices, counted in usage', async () => {
    const r = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0.9, seed: 11, n: 2 });
    assert.equal(r.choices.length, 2);
    assert.deepEqual(r.choices.map((c) => c.index).sort(), [0, 1]);
    for (const c of r.choices) assert.equal(typeof c.text, 'string');
    assert.ok(r.usage.completion_tokens >= 2 && r.usage.completion_tokens <= 16);
  });

  await check('completions: the same seed repeats a sampled text, other seeds differ', async () => {
    const sample = (seed) => client.completions.create({ model, prompt, max_tokens: 16, temperature: 1.0, seed }).then((r) => r.choices[0].text);
    const [a, b] = [await sample(1234), await sample(1234)];
    assert.equal(b, a);
    const others = await Promise.all([1, 2, 3, 4].map((s) => sample(s)));
    assert.ok(others.some((t) => t !== a), 'four other seeds all gave the text of seed 1234');
  });

  await check('completions: stop ends the text before the stop string', async () => {
    const text = greedy.choices[0].text;
    // A stop string from the middle of the greedy text: the first word of 3+ letters after its start.
    const m = /[A-Za-z]{3,}/.exec(text.slice(Math.max(1, Math.floor(text.length / 3))));
    assert.ok(m, `no word to stop at in ${JSON.stringify(text)}`);
    const stop = m[0];
    const r = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stop: [stop] });
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(r.choices[0].text, text.slice(0, text.indexOf(stop)));
  });

  await check('completions: streamed text equals the non-streamed text', async () => {
    const s = await collect(await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stream: true,
      stream_options: { include_usage: true } }));
    assert.ok(s.chunks >= 2, `only ${s.chunks} chunks`);
    assert.equal(s.text[0], greedy.choices[0].text);
    assert.equal(s.finish[0], greedy.choices[0].finish_reason);
    assert.ok(s.usage, 'include_usage sent a usage chunk');
    assert.deepEqual({ ...s.usage }, { ...greedy.usage });
  });

  const messages = [
    { role: 'system', content: 'You answer in the words of the King James Bible.' },
    { role: 'user', content: 'Who made the heaven and the earth?' },
  ];
  let chat;
  await check('chat completions: greedy twice gives the same message', async () => {
    const a = await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0 });
    const b = await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0 });
    assert.equal(a.object, 'chat.completion');
    assert.equal(a.choices.length, 1);
    assert.equal(a.choices[0].message.role, 'assistant');
    assert.equal(typeof a.choices[0].message.content, 'string');
    assert.equal(b.choices[0].message.content, a.choices[0].message.content);
    assert.ok(a.usage.completion_tokens >= 1 && a.usage.completion_tokens <= 20);
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
    chat = a;
  });

  await check('chat completions: streamed deltas add up to the non-streamed message', async () => {
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0, stream: true });
    let role = null;
    const s = { text: '', finish: null, chunks: 0 };
    for await (const chunk of stream) {
      s.chunks++;
      assert.equal(chunk.object, 'chat.completion.chunk');
      for (const c of chunk.choices) {
        if (c.delta?.role) role = c.delta.role;
        s.text += c.delta?.content ?? '';
        if (c.finish_reason) s.finish = c.finish_reason;
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(s.text, chat.choices[0].message.content);
    assert.equal(s.finish, chat.choices[0].finish_reason);
  });

  await check('a bad parameter is a 400 APIError carrying the OpenAI error body', async () => {
    const e = await expectApiError(client.completions.create({ model, prompt, max_tokens: 4, temperature: -1 }), OpenAI.BadRequestError, 400);
    assert.equal(typeof e.error?.message, 'string');
    assert.ok(e.error.message.length > 0);
    assert.equal(typeof e.error.type, 'string');
    assert.ok('param' in e.error && 'code' in e.error, `error body ${JSON.stringify(e.error)}`);
    assert.equal(e.param, 'temperature');
    const e2 = await expectApiError(client.chat.completions.create({ model, messages: [], max_tokens: 4 }), OpenAI.BadRequestError, 400);
    assert.equal(e2.param, 'messages');
    await expectApiError(client.completions.create({ model, prompt, max_tokens: 4, stream: true, temperature: 'hot' }),
      OpenAI.BadRequestError, 400);
  });

  await check('API keys: a wrong key is a 401 AuthenticationError; no key is 401 too', async () => {
    const intruder = new OpenAI({ baseURL, apiKey: 'not-the-key', timeout: 30_000, maxRetries: 0 });
    const e = await expectApiError(intruder.completions.create({ model, prompt, max_tokens: 4 }), OpenAI.AuthenticationError, 401);
    assert.equal(typeof e.error?.message, 'string');
    await expectApiError(intruder.models.list(), OpenAI.AuthenticationError, 401);
    const raw = await fetch(`${baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt, max_tokens: 4 }), signal: AbortSignal.timeout(30_000) });
    assert.equal(raw.status, 401);
    assert.equal(typeof (await raw.json()).error?.message, 'string');
  });

  assert.equal(server.exitCode, null, 'qlm-serve is still running');
  console.log(`test_openai_sdk: ${results.length} checks passed`);
} catch (e) {
  console.error(`test_openai_sdk: FAILED: ${e.stack ?? e}`);
  console.error(`--- qlm-serve stderr (last lines) ---\n${serverLog.split('\n').slice(-30).join('\n')}`);
  process.exitCode = 1;
} finally {
  stopServer();
}
