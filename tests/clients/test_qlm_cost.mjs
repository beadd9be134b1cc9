// qlm-cost as a user runs it: its JSON and its printed report against the formulas of
// docs/cost.md computed here independently, the price table's numbers carried through, a short
// --measure run, and bad input answered by "qlm-cost: error: ..." with exit status 1.
// usage: node test_qlm_cost.mjs QLM_COST_BINARY PRICES_JSON
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const [binary, pricesPath] = process.argv.slice(2);
if (!binary || !pricesPath) {
  console.error('usage: node test_qlm_cost.mjs QLM_COST_BINARY PRICES_JSON');
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), 'qlm-cost-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function run(args, timeoutMs = 60_000) {
  const r = spawnSync(binary, args, { encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  return r;
}

function runJson(args) {
  const jsonPath = join(dir, 'out.json');
  const r = run([...args, '--json', jsonPath]);
  assert.equal(r.status, 0, `qlm-cost ${args.join(' ')} failed: ${r.stderr}`);
  return { stdout: r.stdout, json: JSON.parse(readFileSync(jsonPath, 'utf8')) };
}

const close = (actual, expected, what) =>
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)), `${what}: ${actual} != ${expected}`);

// The formulas of docs/cost.md.
function expected({ price, spot, tps, util, tpr, replicas, hours, qps }) {
  const planned = tps * util;
  const per1k = (price / (planned * 3600)) * 1000;
  const e = {
    dollars_per_1k_tokens: per1k,
    spot_dollars_per_1k_tokens: per1k * (1 - spot),
    dollars_per_1k_requests: per1k * tpr,
    planned_tokens_per_second: planned,
    planned_requests_per_second: planned / tpr,
    fleet_dollars_per_month: replicas * price * hours,
    spot_fleet_dollars_per_month: replicas * price * (1 - spot) * hours,
  };
  if (qps) {
    const demand = qps * tpr;
    e.replicas_needed = Math.max(1, Math.ceil(demand / planned - 1e-9));
    e.target_dollars_per_month = e.replicas_needed * price * hours;
  }
  return e;
}

function check(row, want, label) {
  for (const key of Object.keys(want)) {
    if (key === 'replicas_needed') assert.equal(row.target.replicas_needed, want[key], `${label}: replicas_needed`);
    else if (key === 'target_dollars_per_month') close(row.target.dollars_per_month, want[key], `${label}: target $/month`);
    else close(row[key], want[key], `${label}: ${key}`);
  }
}

let checks = 0;
{
  // Own price, entered throughput, a target traffic.
  const { stdout, json } = runJson(['--price-per-hour', '0.36', '--spot-discount', '0.75', '--throughput', '1000', '--utilisation', '0.5',
    '--tokens-per-request', '200', '--replicas', '3', '--target-qps', '10.01']);
  assert.equal(json.instances.length, 1);
  const row = json.instances[0];
  check(row, expected({ price: 0.36, spot: 0.75, tps: 1000, util: 0.5, tpr: 200, replicas: 3, hours: 730, qps: 10.01 }), 'own price');
  assert.equal(row.target.replicas_needed, 5);  // 2002 tokens/s over 500 a replica
  close(row.dollars_per_1k_tokens, 0.0002, 'hand-computed $/1K tokens');
  assert.match(stdout, /cost per 1K tokens\s+\$0\.0002000\s+on demand, \$0\.00005000 spot/);
  assert.match(stdout, /5 replicas at 40% each/);
  checks++;
}
{
  // Every instance of the table, each with its own price, throughput given as requests/s.
  const table = JSON.parse(readFileSync(pricesPath, 'utf8'));
  const { stdout, json } = runJson(['--prices', pricesPath, '--throughput-rps', '4', '--tokens-per-request', '50', '--target-tokens-per-second', '900']);
  assert.equal(json.instances.length, table.instances.length);
  close(json.inputs.tokens_per_second, 200, 'requests/s times tokens a request');
  for (const [i, inst] of table.instances.entries()) {
    const row = json.instances[i];
    assert.equal(row.name, inst.name);
    const tps = inst.tokens_per_second ?? 200;
    check(row, expected({ price: inst.price_per_hour, spot: inst.spot_discount, tps, util: 0.7, tpr: 50, replicas: 1, hours: 730 }), inst.name);
    assert.equal(row.target.replicas_needed, Math.ceil(900 / (tps * 0.7) - 1e-9), `${inst.name}: replicas for 900 tokens/s`);
    assert.ok(stdout.includes(`== ${inst.name} (`), `the report has a block for ${inst.name}`);
  }
  checks++;
}
{
  // An instance's own measured throughput in the table wins over the entered one.
  const table = join(dir, 'prices.json');
  writeFileSync(table, JSON.stringify({ currency: 'USD', date: '2026-01-01', instances: [
    { name: 'measured', kind: 'gpu', price_per_hour: 2, spot_discount: 0.5, tokens_per_second: 4000 },
    { name: 'plain', kind: 'cpu', price_per_hour: 0.1, spot_discount: 0 }] }));
  const { json } = runJson(['--prices', table, '--throughput', '100', '--instance', 'measured', '--instance', 'plain']);
  assert.equal(json.instances[0].throughput_source, 'from the price table');
  check(json.instances[0], expected({ price: 2, spot: 0.5, tps: 4000, util: 0.7, tpr: 100, replicas: 1, hours: 730 }), 'measured');
  check(json.instances[1], expected({ price: 0.1, spot: 0, tps: 100, util: 0.7, tpr: 100, replicas: 1, hours: 730 }), 'plain');
  checks++;
}
{
  // --measure: a short engine run on the bundled model's shape; the cost follows from what it measured.
  const { stdout, json } = runJson(['--measure', '--shape', 'tiny', '--method', 'w8a8', '--measure-requests', '8', '--measure-tokens', '8',
    '--threads', '2', '--price-per-hour', '1']);
  const m = json.measurement;
  assert.equal(m.requests, 8);
  assert.equal(m.generated_tokens, 64);
  assert.ok(m.tokens_per_second > 0 && Number.isFinite(m.tokens_per_second));
  close(m.tokens_per_second, m.generated_tokens / m.seconds, 'measured tokens/s');
  check(json.instances[0], expected({ price: 1, spot: 0, tps: m.tokens_per_second, util: 0.7, tpr: 100, replicas: 1, hours: 730 }), 'measured');
  assert.match(stdout, /measured: [0-9.]+ tokens\/s \(8 requests x 8 tokens/);
  checks++;
}

// Bad input: a clear message and exit status 1, never a report.
const malformed = join(dir, 'malformed.json');
writeFileSync(malformed, '{"currency": "USD", "date": "x", "instances": [{"name": "a", "kind": "cpu", "price_per_hour": -2, "spot_discount": 0}]}');
const notJson = join(dir, 'not.json');
writeFileSync(notJson, '{"currency": ');
const refusals = [
  [['--instance', 'no-such-instance', '--throughput', '100', '--prices', pricesPath], /unknown instance type 'no-such-instance' \(the price table has: /],
  [['--price-per-hour', '0', '--throughput', '100'], /--price-per-hour must be > 0/],
  [['--price-per-hour', '-1', '--throughput', '100'], /--price-per-hour must be > 0/],
  [['--price-per-hour', '1', '--throughput', '-5'], /--throughput must be > 0/],
  [['--price-per-hour', '1', '--throughput', '0'], /--throughput must be > 0/],
  [['--price-per-hour', '1', '--throughput', 'fast'], /--throughput: 'fast' is not a valid number/],
  [['--price-per-hour', '1', '--throughput-rps', '0'], /--throughput-rps must be > 0/],
  [['--price-per-hour', '1'], /no throughput for instance type/],
  [['--price-per-hour', '1', '--throughput', '10', '--utilisation', '1.5'], /utilisation must be in \(0, 1\]/],
  [['--price-per-hour', '1', '--throughput', '10', '--spot-discount', '1'], /spot discount must be in \[0, 1\)/],
  [['--price-per-hour', '1', '--throughput', '10', '--replicas', '0'], /replicas must be at least 1/],
  [['--price-per-hour', '1', '--throughput', '10', '--target-qps', '1', '--target-tokens-per-second', '5'], /not both/],
  [['--price-per-hour', '1', '--throughput', '10', '--measure'], /give the throughput one way/],
  [['--instance', 'aws-c7i.large', '--price-per-hour', '1', '--throughput', '10'], /give --instance or --price-per-hour, not both/],
  [['--prices', malformed, '--throughput', '10'], /malformed\.json, instances\[0\] \(a\): "price_per_hour" must be > 0/],
  [['--prices', notJson, '--throughput', '10'], /not\.json is not valid JSON/],
  [['--prices', join(dir, 'missing.json'), '--throughput', '10'], /cannot open the price table/],
  [['--throughput', '10', '--shape', 'tiny'], /--shape is an option of --measure/],
  [['--measure', '--shape', 'huge', '--price-per-hour', '1'], /unknown --shape 'huge'/],
  [['--throughput', '10', '--frobnicate', '1'], /unknown option --frobnicate/],
];
for (const [args, message] of refusals) {
  const r = run(args);
  assert.equal(r.status, 1, `qlm-cost ${args.join(' ')}: exit status ${r.status}, stderr ${r.stderr}`);
  assert.match(r.stderr, /^qlm-cost: error: /, `qlm-cost ${args.join(' ')}`);
  assert.match(r.stderr, message, `qlm-cost ${args.join(' ')}`);
  assert.equal(r.stdout.includes('cost per 1K tokens'), false, `qlm-cost ${args.join(' ')} printed a report`);
  checks++;
}
console.log(`test_qlm_cost: ${checks} checks passed`);
