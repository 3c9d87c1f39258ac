#!/usr/bin/env node
// Quick static check of a customer module before the (slower) component
// build; no customer code is run.
//
//     node sdk-wit/js/tools/precheck.mjs [--print-kind] CUSTOMER.js   (or .ts: types are stripped first)
//
// Checks that the file parses as an ES module, imports nothing but
// "pipeline-sdk" (and pipeline:transform/* WIT interfaces) — or, for a
// columnar function, also "pipeline-sdk/columnar" and "apache-arrow" —,
// imports only names that those modules export, and has a default export.
// Prints `FILE:LINE:COL: message` and exits 1 on a problem. A module that
// imports "pipeline-sdk/columnar" is a columnar function; --print-kind prints
// `columnar` or `record` on stdout (for the build).
//
// Uses node:vm's SourceTextModule (parse and link only, never evaluate),
// which needs --experimental-vm-modules: the script re-runs itself with it.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const self = fileURLToPath(import.meta.url);
const printKind = process.argv.includes("--print-kind");
const args = process.argv.slice(2).filter((a) => a !== "--print-kind");
if (args.length !== 1) {
  console.error("usage: precheck.mjs [--print-kind] CUSTOMER.js");
  process.exit(2);
}
const src = args[0];

if (!process.execArgv.includes("--experimental-vm-modules")) {
  const r = spawnSync(
    process.execPath,
    ["--experimental-vm-modules", "--no-warnings", self, ...(printKind ? ["--print-kind"] : []), src],
    { stdio: "inherit" },
  );
  process.exit(r.status ?? 1);
}

const vm = await import("node:vm");
const sdk = await import("../pipeline-sdk.js");
const { isTypeScript, stripTypes } = await import("./strip-types.mjs");
let text = readFileSync(src, "utf8");
if (isTypeScript(src)) {
  try {
    text = stripTypes(text, src); // same lines and columns
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}

function fail(message, line, col) {
  const where = line ? `${src}:${line}${col ? `:${col}` : ""}` : src;
  console.error(`${where}: ${message}`);
  const code = line ? text.split("\n")[line - 1] : undefined;
  if (code !== undefined) console.error(`    ${code.trim()}`);
  process.exit(1);
}

function lineOf(needle) {
  const i = text.indexOf(needle);
  return i < 0 ? undefined : text.slice(0, i).split("\n").length;
}

let mod;
try {
  mod = new vm.SourceTextModule(text, { identifier: src });
} catch (e) {
  // SourceTextModule does not say where; `node --check` on a .mjs copy does
  // ("FILE:LINE" on its first line of output).
  let line;
  const dir = mkdtempSync(join(tmpdir(), "pipeline-precheck-"));
  try {
    const copy = join(dir, "module.mjs");
    writeFileSync(copy, text);
    const r = spawnSync(process.execPath, ["--check", copy], { encoding: "utf8" });
    const m = /module\.mjs:(\d+)/.exec(r.stderr || "");
    if (m) line = Number(m[1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  fail(`${e.name}: ${e.message}`, line);
}

const specs = mod.dependencySpecifiers;
const isColumnar = specs.includes("pipeline-sdk/columnar");
const allowed = (s) =>
  s === "pipeline-sdk" ||
  s.startsWith("pipeline:transform/") ||
  (isColumnar && (s === "pipeline-sdk/columnar" || s === "apache-arrow"));
const where = (spec) => lineOf(`"${spec}"`) ?? lineOf(`'${spec}'`);
for (const spec of specs) {
  if (allowed(spec)) continue;
  if (spec === "apache-arrow") {
    fail(
      'imports "apache-arrow", which the build bundles only into a columnar function: one that ' +
        'imports from "pipeline-sdk/columnar" and default-exports columnar((table) => ...); ' +
        'a per-record function may import only "pipeline-sdk"',
      where(spec),
    );
  }
  fail(
    isColumnar
      ? `imports "${spec}": only "pipeline-sdk", "pipeline-sdk/columnar" and "apache-arrow" are available ` +
          "inside a columnar component (the build bundles just this file, the SDK and apache-arrow; put helpers in this file)"
      : `imports "${spec}": only "pipeline-sdk" is available inside the component ` +
          '(the build bundles just this file and the SDK; put helpers in this file; a columnar function also gets "apache-arrow")',
    where(spec),
  );
}

const exportsOf = new Map([["pipeline-sdk", Object.keys(sdk)]]);
if (isColumnar) {
  // The modules the component gets: the SDK's columnar entry point and
  // apache-arrow's browser build (what the build bundles; the same names as
  // its Node build).
  exportsOf.set("pipeline-sdk/columnar", Object.keys(await import("../pipeline-sdk-columnar.js")));
  exportsOf.set("apache-arrow", Object.keys(await import("apache-arrow/Arrow.dom")));
}
await mod.link(async (spec) => {
  const names = exportsOf.get(spec) ?? ["log"];
  return new vm.SyntheticModule(names, () => {});
}).catch((e) => {
  // e.g. "The requested module 'pipeline-sdk' does not provide an export named 'transfrom'"
  const m = /export named '([^']+)'/.exec(e.message);
  fail(`${e.name}: ${e.message}`, m ? lineOf(m[1]) : undefined);
});

if (!Reflect.ownKeys(mod.namespace).includes("default")) {
  fail(
    "has no default export; the transform function must be the default export: " +
      (isColumnar ? "export default columnar((table) => { ... })" : "export default transform((record) => { ... })"),
  );
}
if (printKind) console.log(isColumnar ? "columnar" : "record");
