#!/usr/bin/env node
// The `pipeline-sdk-js` command of the pipeline-sdk npm package: builds a
// customer JavaScript/TypeScript module into a WebAssembly component, runs
// it natively on a JSONL file, or checks it. The one implementation of the
// JS build: scripts/build-js.sh (a checkout) and `pipeline-worker build` call
// it.
//
//     pipeline-sdk-js build SRC.js [-o OUT.wasm] [--minimal-wasi]   (or .ts / .mjs / .mts)
//     pipeline-sdk-js run SRC.js [INPUT.jsonl] [--verbose] [--tombstone=LINE]
//     pipeline-sdk-js check SRC.js
//     pipeline-sdk-js --version
//
// Build: a scratch directory gets a copy of SRC (types stripped for .ts,
// same file name, so error locations keep the customer's lines), a copy of
// pipeline-sdk.js and a generated entry module, pipeline-entry.js, that
// imports the host log, the SDK and the customer module and exports the two
// WIT interfaces; then componentize-js (the version this package depends on)
// against the package's wit/. componentize-js evaluates the module graph at
// build time and resolves a bare specifier as a path relative to the
// importing file ("pipeline-sdk" → ./pipeline-sdk.js), so a per-record build
// needs no bundler.
//
// A columnar function (a module importing "pipeline-sdk/columnar") targets
// the world transform-columnar instead: the scratch directory also gets
// pipeline-sdk-columnar.js and apache-arrow.js, apache-arrow's browser build
// bundled into one ES module by rolldown (both pinned by this package), and
// the copy of SRC has its "pipeline-sdk/columnar" import pointed at
// ./pipeline-sdk-columnar.js (a subpath would resolve to a directory next to
// pipeline-sdk.js). Only the import's string changes, so lines stay put.
// Default features: `--disable http fetch-event` (the worker refuses
// wasi:http); --minimal-wasi (or PIPELINE_JS_MINIMAL_WASI=1) also disables
// stdio, random and clocks (see README.md).
import { spawnSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const pkgDir = dirname(dirname(fileURLToPath(import.meta.url)));
const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
const WIT_PACKAGE = "pipeline:transform@0.2.0";

function fail(message, code = 2) {
  console.error(`error: ${message}`);
  process.exit(code);
}

/** The CLI script of a dependency, resolved from this package. */
function toolBin(name) {
  // Node's own lookup order (nested, then hoisted node_modules), by hand:
  // these packages' "exports" do not list package.json.
  const manifest = (require.resolve.paths(name) ?? [])
    .map((d) => join(d, name, "package.json"))
    .find((p) => existsSync(p));
  if (!manifest) {
    fail(`${name} is not installed next to pipeline-sdk (${pkgDir}); reinstall the package: npm install pipeline-sdk`);
  }
  const m = JSON.parse(readFileSync(manifest, "utf8"));
  const bin = typeof m.bin === "string" ? m.bin : Object.values(m.bin)[0];
  return { path: join(dirname(manifest), bin), version: m.version };
}

function node(args, opts = {}) {
  return spawnSync(process.execPath, args, { stdio: "inherit", ...opts });
}

const major = Number(process.versions.node.split(".")[0]);
if (major < 20) fail(`Node >= 20 is needed, found ${process.version}`);

const [command, ...rest] = process.argv.slice(2);
if (command === "--version" || command === "-V") {
  const cjs = toolBin("@bytecodealliance/componentize-js").version;
  console.log(`pipeline-sdk ${pkg.version} (WIT ${WIT_PACKAGE}, componentize-js ${cjs})`);
  process.exit(0);
}
if (command === "run") {
  process.exit(node([join(pkgDir, "tools/run_local.mjs"), ...rest]).status ?? 1);
}
if (command === "check") {
  if (rest.length !== 1) fail("usage: pipeline-sdk-js check SRC.js");
  process.exit(node([join(pkgDir, "tools/precheck.mjs"), rest[0]]).status ?? 1);
}
if (command !== "build") {
  console.error(
    "usage: pipeline-sdk-js build SRC.js [-o OUT.wasm] [--minimal-wasi]\n" +
      "       pipeline-sdk-js run SRC.js [INPUT.jsonl] [--verbose] [--tombstone=LINE]\n" +
      "       pipeline-sdk-js check SRC.js\n" +
      "       pipeline-sdk-js --version",
  );
  process.exit(2);
}

// --- build ---------------------------------------------------------------
let src;
let out;
let minimal = process.env.PIPELINE_JS_MINIMAL_WASI === "1";
for (let i = 0; i < rest.length; i++) {
  const a = rest[i];
  if (a === "-o" || a === "--out") out = rest[++i];
  else if (a === "--minimal-wasi") minimal = true;
  else if (a.startsWith("-")) fail(`unknown option ${a}`);
  else if (src === undefined) src = a;
  else fail(`one SRC file, got ${src} and ${a}`);
}
if (!src) fail("usage: pipeline-sdk-js build SRC.js [-o OUT.wasm]");
if (!existsSync(src)) fail(`${src}: no such file`);
const name = basename(src);
if (!/\.(js|mjs|ts|mts)$/.test(name)) fail(`${src}: expected a .js or .mjs file (an ES module), or .ts / .mts`);
if (/^pipeline-sdk(-columnar)?\./.test(name) || name === "pipeline-entry.js" || name === "apache-arrow.js") {
  fail(`${src}: the file name ${name} is taken by the build; rename the file`);
}
out = resolve(out ?? src.replace(/\.(js|mjs|ts|mts)$/, ".wasm"));

const cjs = toolBin("@bytecodealliance/componentize-js");
const disable = ["http", "fetch-event", ...(minimal ? ["stdio", "random", "clocks"] : [])];

// Quick static check, no code run; it also says which world to build.
const pre = node([join(pkgDir, "tools/precheck.mjs"), "--print-kind", src], {
  stdio: ["inherit", "pipe", "inherit"],
  encoding: "utf8",
});
if (pre.status !== 0) process.exit(1);
const columnar = pre.stdout.trim() === "columnar";
const WORLD = columnar ? "transform-columnar" : "transform-batch";
console.error(`building ${src} -> ${out} (world ${WORLD} of ${WIT_PACKAGE}, pipeline-sdk ${pkg.version}, componentize-js ${cjs.version}, --disable ${disable.join(" ")})`);

const work = mkdtempSync(join(tmpdir(), "pipeline-js-build."));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));
const app = join(work, "app");
mkdirSync(app);
let text = readFileSync(src, "utf8");
if (/\.(ts|mts)$/.test(name)) {
  const { stripTypes } = await import("../tools/strip-types.mjs");
  try {
    text = stripTypes(text, src);
  } catch (e) {
    console.error(`error: ${e.message}`);
    process.exit(1);
  }
}
copyFileSync(join(pkgDir, "pipeline-sdk.js"), join(app, "pipeline-sdk.js"));
if (columnar) {
  const { bundleArrow, pointColumnarImports } = await import("../tools/columnar-build.mjs");
  try {
    text = pointColumnarImports(text);
  } catch (e) {
    console.error(`error: ${src}: ${e.message}`);
    process.exit(1);
  }
  copyFileSync(join(pkgDir, "pipeline-sdk-columnar.js"), join(app, "pipeline-sdk-columnar.js"));
  const arrow = await bundleArrow(join(app, "apache-arrow.js"));
  console.error(`  bundled apache-arrow ${arrow.version} (${Math.round(arrow.bytes / 1024)} KB) with rolldown in ${arrow.seconds.toFixed(1)}s`);
  writeFileSync(
    join(app, "pipeline-entry.js"),
    `// Generated by pipeline-sdk-js build: the componentize-js entry module. It is
// evaluated at build time and checks that ${name} default-exports columnar(fn).
import { log as hostLog } from "pipeline:transform/host@0.2.0";
import { _columnarComponent } from "./pipeline-sdk-columnar.js";
import * as customer from "./${name}";

const component = _columnarComponent(customer, { hostLog, file: ${JSON.stringify(name)} });
export const columnarTransformer = component.columnarTransformer;
`,
  );
} else {
  writeFileSync(
    join(app, "pipeline-entry.js"),
    `// Generated by pipeline-sdk-js build: the componentize-js entry module. It is
// evaluated at build time and checks that ${name} default-exports a function.
import { log as hostLog } from "pipeline:transform/host@0.2.0";
import { _component } from "pipeline-sdk";
import * as customer from "./${name}";

const component = _component(customer, { hostLog, file: ${JSON.stringify(name)} });
export const transformer = component.transformer;
export const batchTransformer = component.batchTransformer;
`,
  );
}
writeFileSync(join(app, name), text);

const started = process.hrtime.bigint();
const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
const tty = process.stderr.isTTY;
const ticker = setInterval(
  () => {
    const what = "componentize-js (evaluating your module in the engine, then a snapshot)";
    if (tty) process.stderr.write(`\r  ${what}: ${Math.floor(elapsed())} s`);
    else process.stderr.write(`  ${what}: ${Math.floor(elapsed())} s\n`);
  },
  tty ? 1000 : 10000,
);
// componentize-js maps the working directory to / inside the component at
// build time, so file names in stack traces are just the customer's name.
const wasm = join(work, "out.wasm");
const child = spawn(
  process.execPath,
  [cjs.path, "pipeline-entry.js", "--wit", join(pkgDir, "wit"), "--world-name", WORLD, "--disable", ...disable, "-o", wasm],
  { cwd: app, stdio: ["ignore", "pipe", "pipe"] },
);
let log = "";
child.stdout.on("data", (d) => (log += d));
child.stderr.on("data", (d) => (log += d));
const rc = await new Promise((done) => child.on("close", done));
clearInterval(ticker);
if (tty) process.stderr.write("\r\x1b[K");
const secs = elapsed().toFixed(1);

if (rc !== 0 || !existsSync(wasm) || statSync(wasm).size === 0) {
  console.error(`error: building ${src} failed after ${secs}s; componentize-js said:`);
  // Drop the componentize-js CLI's own Node stack trace and the temporary
  // paths; keep the engine's message and the guest's stack.
  const noise = /^\s+at .*(node_modules|node:internal)|^file:\/\/\/.*node_modules|^\s+throw new Error\(err\);$|^\s+\^$|^Node\.js v/;
  for (const line of log.split("\n")) {
    if (!noise.test(line)) console.error(`  | ${line.split(`${app}/`).join("")}`);
  }
  // Point at the customer's file and line when the exception names it
  // ("NAME:LINE:COL Error: message" after "Exception while evaluating").
  const esc = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const m = log.match(new RegExp(`^${esc}:(\\d+):(\\d+) (.*)$`, "m"));
  if (m) {
    console.error(`${src}:${m[1]}:${m[2]}: ${m[3]}`);
    const code = (readFileSync(src, "utf8").split("\n")[Number(m[1]) - 1] ?? "").trim();
    if (code) console.error(`    ${code}`);
  }
  process.exit(1);
}

mkdirSync(dirname(out), { recursive: true });
try {
  renameSync(wasm, out);
} catch {
  copyFileSync(wasm, out); // another file system
}
const bytes = readFileSync(out);
console.log(`built ${out}`);
console.log(`  size:       ${bytes.length} bytes (${(bytes.length / 1048576).toFixed(1)} MiB)`);
console.log(`  sha256:     ${createHash("sha256").update(bytes).digest("hex")}`);
console.log(`  build time: ${secs}s`);
// The imports, as jco (the version this package depends on) reads them.
const jco = toolBin("@bytecodealliance/jco");
const wit = spawnSync(process.execPath, [jco.path, "wit", out], { encoding: "utf8" });
if (wit.status === 0) {
  console.log("  imports:");
  for (const line of wit.stdout.split("\n")) {
    const m = line.match(/^\s*import (\S+?);?$/);
    if (m) console.log(`    ${m[1]}`);
  }
}
