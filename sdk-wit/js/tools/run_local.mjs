#!/usr/bin/env node
// Runs a customer function on plain Node, without building a component.
//
//     node sdk-wit/js/tools/run_local.mjs CUSTOMER.js [INPUT.jsonl] [--verbose] [--tombstone=LINE]   (or CUSTOMER.ts)
//
// Each input line is one record value (bytes as written; blank lines
// skipped); with --tombstone=LINE, a line equal to LINE is sent as a
// tombstone (a null value). Prints the value of each output record, one a
// line, in order (so the output of a sample file can be diffed against its
// expected.jsonl); filtered records print nothing; a tombstone output prints
// `<tombstone>` (no JSON line starts with `<`). Errors go to stderr as
// `line N: invalid-input: ...` / `line N: failed: ...`; the exit status is 1
// if any record was refused. With --verbose, each output line is prefixed by
// its topic, key and headers.
//
// It goes through the same code path as the component (`_component` in
// pipeline-sdk.js), but on Node's V8 rather than the component's
// SpiderMonkey (StarlingMonkey), so error texts from the engine (a
// JSON.parse or TypeError message) are worded differently.
import { readFileSync } from "node:fs";
import { register } from "node:module";
import { basename, resolve } from "node:path";
import { pathToFileURL } from "node:url";

register("./hooks.mjs", import.meta.url);

const argv = process.argv.slice(2);
const verbose = argv.includes("--verbose");
const tombstoneArg = argv.find((a) => a.startsWith("--tombstone="));
const tombstone = tombstoneArg === undefined ? null : tombstoneArg.slice("--tombstone=".length);
const args = argv.filter((a) => a !== "--verbose" && !a.startsWith("--tombstone="));
if (args.length < 1 || args.length > 2) {
  console.error("usage: run_local.mjs CUSTOMER.js [INPUT.jsonl] [--verbose] [--tombstone=LINE]");
  process.exit(2);
}
const src = resolve(args[0]);
const { _component } = await import("../pipeline-sdk.js");
const customer = await import(pathToFileURL(src).href);
if (customer.default && customer.default[Symbol.for("pipeline-sdk.columnar")]) {
  // Decoding JSON lines into the pipeline's Arrow schema is the worker's job.
  console.error(
    `${args[0]} is a columnar function: run it with \`pipeline-worker test --config pipeline.toml --input ${args[1] ?? "INPUT.jsonl"}\`, ` +
      'or call it in a unit test with call(fn, table) from "pipeline-sdk/columnar"',
  );
  process.exit(2);
}
const { transformer } = _component(customer, { file: basename(src) });

const data = args.length === 2 ? readFileSync(args[1]) : readFileSync(0);
const dec = new TextDecoder();
let refused = 0;
let start = 0;
let n = 0;
while (start <= data.length) {
  let end = data.indexOf(0x0a, start);
  if (end === -1) end = data.length;
  const line = new Uint8Array(data.subarray(start, end));
  start = end + 1;
  n += 1;
  if (dec.decode(line).trim() === "") continue;
  const result = transformer.transform({
    key: new TextEncoder().encode(`key-${n}`),
    // jco's form of a WIT `option` none: undefined.
    value: tombstone !== null && dec.decode(line).replace(/\r$/, "") === tombstone ? undefined : line,
    headers: [],
    topic: "input",
    partition: 0,
    offset: BigInt(n - 1),
    timestamp: undefined,
  });
  if (result.tag === "ok") {
    for (const out of result.val) {
      let prefix = "";
      if (verbose) {
        const headers = out.headers.map((h) => [h.key, dec.decode(h.value)]);
        prefix = `[topic=${out.topic ?? null} key=${out.key === undefined ? null : JSON.stringify(dec.decode(out.key))} headers=${JSON.stringify(headers)}] `;
      }
      process.stdout.write(prefix + (out.value === undefined ? "<tombstone>" : dec.decode(out.value)) + "\n");
    }
  } else {
    refused += 1;
    console.error(`line ${n}: ${result.val.tag}: ${result.val.val}`);
  }
}
process.exit(refused ? 1 : 0);
