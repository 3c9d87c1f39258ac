// The two steps a columnar build adds (pipeline-sdk-js build, for a module
// importing "pipeline-sdk/columnar"); see bin/pipeline-sdk-js.mjs.
import { readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAst } from "rolldown/parseAst";

/**
 * `text` with each `import ... from "pipeline-sdk/columnar"` (and `export
 * ... from`) pointed at ./pipeline-sdk-columnar.js, the file the build puts
 * next to it: componentize-js resolves a bare specifier as a path relative to
 * the importing file, and "pipeline-sdk/columnar" would be a directory beside
 * pipeline-sdk.js. Found with rolldown's parser, so strings and comments
 * that merely contain the name are left alone; only the string literal
 * changes, so every line keeps its number.
 */
export function pointColumnarImports(text) {
  const ast = parseAst(text, { sourceType: "module" });
  const spans = ast.body
    .filter((n) => n.source && n.source.value === "pipeline-sdk/columnar")
    .map((n) => [n.source.start, n.source.end]);
  for (const [start, end] of spans.reverse()) {
    const quote = text[start];
    text = text.slice(0, start) + `${quote}./pipeline-sdk-columnar.js${quote}` + text.slice(end);
  }
  return text;
}

const arrowEntry = () => fileURLToPath(import.meta.resolve("apache-arrow/Arrow.dom"));

/**
 * apache-arrow's browser build (Arrow.dom.mjs, which needs no Node modules)
 * bundled by rolldown into one ES module at `out`, keeping every export (the
 * customer may import any of them). Not minified: names stay readable in
 * stack traces. Returns its version, size and the time it took.
 */
export async function bundleArrow(out) {
  const { rolldown } = await import("rolldown");
  const t0 = process.hrtime.bigint();
  // cwd: the package, so the bundle (its module path comments) does not
  // depend on where the build runs.
  const cwd = fileURLToPath(new URL("..", import.meta.url));
  const bundle = await rolldown({ input: arrowEntry(), cwd, platform: "browser", logLevel: "warn" });
  try {
    await bundle.write({ file: out, format: "esm", minify: false });
  } finally {
    await bundle.close();
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const manifest = join(dirname(arrowEntry()), "package.json");
  const { version } = JSON.parse(readFileSync(manifest, "utf8"));
  return { version, bytes: statSync(out).size, seconds };
}
