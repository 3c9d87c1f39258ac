#!/usr/bin/env node
// TypeScript → JavaScript by type stripping: type annotations, interfaces,
// `import type`, `as T`, ... are replaced by whitespace, so every line and
// column stays where it was (error locations in the component point at the
// .ts file's real lines). Uses amaro (the library behind Node 22's
// --experimental-strip-types), pinned in package.json. Constructs that need
// code generation (enum, namespace with values, parameter properties) are
// refused, as with Node's strip-only mode.
//
//     node sdk-wit/js/tools/strip-types.mjs IN.ts OUT.js
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);

export function isTypeScript(path) {
  return /\.(ts|mts)$/.test(path);
}

/** Returns the JavaScript; throws an Error whose message names file:line. */
export function stripTypes(code, filename) {
  let amaro;
  try {
    amaro = require("amaro");
  } catch (e) {
    throw new Error(
      "TypeScript needs the build tools: run scripts/build-js.sh once (npm ci in sdk-wit/js)",
    );
  }
  try {
    return amaro.transformSync(code, { mode: "strip-only", filename }).code;
  } catch (e) {
    // amaro's errors carry `startLine` (1-based) and `startColumn` (0-based).
    const line = e && Number.isInteger(e.startLine) ? e.startLine : undefined;
    const col = line !== undefined && Number.isInteger(e.startColumn) ? e.startColumn + 1 : undefined;
    const message = String((e && e.message) || e).split("\n")[0];
    const err = new Error(
      `${filename}${line !== undefined ? `:${line}:${col}` : ""}: TypeScript: ${message}` +
        (e && e.code === "UnsupportedSyntax"
          ? " (only erasable TypeScript is supported: no enum, no namespace with values, no parameter properties)"
          : ""),
    );
    err.line = line;
    throw err;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error("usage: strip-types.mjs IN.ts OUT.js");
    process.exit(2);
  }
  try {
    writeFileSync(output, stripTypes(readFileSync(input, "utf8"), input));
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}
