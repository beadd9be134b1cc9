#!/usr/bin/env node
// Produce the golden token ids for the tokenizer tests with the reference JavaScript GPT-2 encoder
// (Encoder.js from the npm package gpt-3-encoder 1.1.4, a port of OpenAI's encoder.py). The
// package is NOT part of this repository: pass the location of its Encoder.js.
//
// usage: node tools/make_tokenizer_golden.js /path/to/gpt-3-encoder/Encoder.js [repo_root]
//
// Reads  tests/data/tokenizer_corpus.txt             (one sample per '\n'-separated line)
//        tests/data/tokenizer_corpus_multiline.jsonl (one JSON string per line)
// Writes tests/data/tokenizer_golden.txt             (space-separated ids, one line per sample)
//        tests/data/tokenizer_golden_multiline.txt
'use strict';
const fs = require('fs');
const path = require('path');

if (process.argv.length < 3) {
  console.error('usage: node make_tokenizer_golden.js /path/to/Encoder.js [repo_root]');
  process.exit(2);
}
const encoder = require(path.resolve(process.argv[2]));
const root = process.argv[3] || path.join(__dirname, '..');
const data = path.join(root, 'tests', 'data');

// Keep a leading U+FEFF (ignoreBOM) and refuse invalid UTF-8 (fatal): the corpus must be exact.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function splitLines(buf) {
  const out = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === 0x0a) { out.push(buf.subarray(start, i)); start = i + 1; }
  }
  if (start !== buf.length) throw new Error('corpus must end with a newline');
  return out;
}

function encodeAll(samples, what) {
  const lines = samples.map((s, i) => {
    const ids = encoder.encode(s);
    for (const id of ids) {
      if (!Number.isInteger(id)) throw new Error(`${what} sample ${i + 1}: reference gave id ${id}`);
    }
    // (the reference decode drops a leading U+FEFF: TextDecoder's default BOM handling)
    if (encoder.decode(ids) !== s.replace(/^\uFEFF/, '')) throw new Error(`${what} sample ${i + 1}: reference does not round-trip`);
    return ids.join(' ');
  });
  return lines.join('\n') + '\n';
}

const corpus = splitLines(fs.readFileSync(path.join(data, 'tokenizer_corpus.txt')))
  .map((b) => utf8.decode(b));
const multi = splitLines(fs.readFileSync(path.join(data, 'tokenizer_corpus_multiline.jsonl')))
  .map((b) => JSON.parse(utf8.decode(b)));

fs.writeFileSync(path.join(data, 'tokenizer_golden.txt'), encodeAll(corpus, 'corpus'));
fs.writeFileSync(path.join(data, 'tokenizer_golden_multiline.txt'), encodeAll(multi, 'multiline'));
console.log(`${corpus.length} corpus lines, ${multi.length} multi-line samples`);
