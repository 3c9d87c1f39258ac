// Unit tests of pipeline-sdk-columnar.js ("pipeline-sdk/columnar") and the
// columnar build's own steps, on plain Node (no component build):
//     node --test sdk-wit/js/test/columnar.test.mjs
// The component itself: tests/all/columnar_init.rs (init --lang js
// --columnar, build, pipeline-worker test).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import * as arrow from "apache-arrow";
import { Int64, makeVector, tableFromArrays, tableFromIPC, tableToIPC, Utf8, vectorFromArray } from "apache-arrow";

import {
  _columnarComponent,
  BatchRefused,
  call,
  columnar,
  ERROR,
  filterRows,
  InvalidInput,
  ROW,
  takeRows,
  TOPIC,
  withColumn,
  withErrors,
  withRowIndex,
  withRows,
  withTopics,
} from "../pipeline-sdk-columnar.js";
import { _component, InvalidInput as SdkInvalidInput, transform } from "../pipeline-sdk.js";
import { bundleArrow, pointColumnarImports } from "../tools/columnar-build.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const FILE = "columnar.test.mjs";

function readings() {
  return tableFromArrays({
    sensor: vectorFromArray(["greenhouse-1", "freezer-2", "probe-3", "boiler-4"], new Utf8()),
    celsius: new Float64Array([21.5, -40, -300, 100]),
  });
}

/** Rows as plain objects (Uint32 `_row` values are numbers). */
function rows(table) {
  return table.toArray().map((r) => ({ ...r.toJSON() }));
}

/** The refusal `call` throws for `fn` on `input`. */
function refusal(fn, input = readings()) {
  try {
    call(fn, input, { file: FILE });
  } catch (e) {
    if (e instanceof BatchRefused) return e;
    throw e;
  }
  assert.fail("the batch was not refused");
}

// The init --columnar template's function, inline: convert, refuse, route.
const convert = columnar(function convert(table) {
  const c = table.getChild("celsius").toArray();
  const fahrenheit = new Float64Array(c.length);
  const errors = new Array(c.length).fill(null);
  const topics = new Array(c.length).fill(null);
  for (let i = 0; i < c.length; i++) {
    fahrenheit[i] = (c[i] * 9) / 5 + 32;
    if (c[i] < -273.15) errors[i] = `celsius ${c[i]} is below absolute zero`;
    else if (c[i] >= 90) topics[i] = "alerts";
  }
  return withTopics(withErrors(withRowIndex(withColumn(table, "fahrenheit", fahrenheit)), errors), topics);
});

test("columnar marks and returns the function; refuses non-functions", () => {
  const f = (t) => t;
  assert.equal(columnar(f), f);
  assert.equal(f[Symbol.for("pipeline-sdk.columnar")], true);
  assert.throws(() => columnar({}), /columnar\(\) needs a function.*not an object/);
  assert.equal(ROW, "_row");
  assert.equal(TOPIC, "_topic");
  assert.equal(ERROR, "_error");
  // One InvalidInput class for both modules, so `instanceof` holds either way.
  assert.equal(InvalidInput, SdkInvalidInput);
});

test("a 1:1 function through IPC: its columns plus _row, _error and _topic", () => {
  const out = call(convert, readings());
  const fields = out.schema.fields.map((f) => `${f.name}:${f.type}:${f.nullable ? "null" : "non-null"}`);
  assert.deepEqual(fields, [
    "sensor:Utf8:null",
    "celsius:Float64:non-null",
    "fahrenheit:Float64:non-null",
    "_row:Uint32:non-null",
    "_error:Utf8:null",
    "_topic:Utf8:null",
  ]);
  assert.deepEqual(rows(out), [
    { sensor: "greenhouse-1", celsius: 21.5, fahrenheit: 70.7, _row: 0, _error: null, _topic: null },
    { sensor: "freezer-2", celsius: -40, fahrenheit: -40, _row: 1, _error: null, _topic: null },
    { sensor: "probe-3", celsius: -300, fahrenheit: -508, _row: 2, _error: "celsius -300 is below absolute zero", _topic: null },
    { sensor: "boiler-4", celsius: 100, fahrenheit: 212, _row: 3, _error: null, _topic: "alerts" },
  ]);
});

test("takeRows reorders, repeats and drops rows; _row names each one's input", () => {
  const out = call((t) => takeRows(t, [3, 0, 0, 1]), readings());
  assert.deepEqual(
    rows(out).map((r) => [r.sensor, r._row]),
    [
      ["boiler-4", 3],
      ["greenhouse-1", 0],
      ["greenhouse-1", 0],
      ["freezer-2", 1],
    ],
  );
  // Nothing kept: an empty batch, which produces nothing for any input.
  const none = call((t) => takeRows(t, []), readings());
  assert.equal(none.numRows, 0);
  assert.throws(() => takeRows(readings(), [4]), /row index 4 is out of range for a batch of 4 rows/);
  assert.throws(() => takeRows(readings(), [1.5]), /rows\[0\] is 1\.5, not a row number/);
  assert.throws(() => takeRows(withRowIndex(readings()), [0]), /already has a column `_row`/);
});

test("filterRows keeps true rows, from an array, a Bool vector or a function", () => {
  const sensors = (t) => rows(t).map((r) => `${r.sensor}@${r._row}`);
  assert.deepEqual(sensors(call((t) => filterRows(t, [true, null, false, true]), readings())), ["greenhouse-1@0", "boiler-4@3"]);
  const mask = vectorFromArray([false, true, true, false]);
  assert.deepEqual(sensors(call((t) => filterRows(t, mask), readings())), ["freezer-2@1", "probe-3@2"]);
  assert.deepEqual(
    sensors(call((t) => filterRows(t, (i) => t.getChild("celsius").get(i) > 0), readings())),
    ["greenhouse-1@0", "boiler-4@3"],
  );
  assert.throws(() => filterRows(readings(), [true]), /filter mask has 1 values for a batch of 4 rows/);
});

test("withRows maps a table the function built itself", () => {
  const out = call((t) => withRows(tableFromArrays({ n: new Float64Array([7, 8, 9]) }), [2, 2, 0]), readings());
  assert.deepEqual(rows(out), [
    { n: 7, _row: 2 },
    { n: 8, _row: 2 },
    { n: 9, _row: 0 },
  ]);
});

test("the helpers refuse misuse with the column's name", () => {
  const t = readings();
  assert.throws(() => withColumn(t, "celsius", new Float64Array(4)), /already has a column `celsius`/);
  assert.throws(() => withColumn(t, "x", new Float64Array(3)), /column `x` has 3 values for a batch of 4 rows/);
  assert.throws(() => withColumn(t, "x", 5), /column `x`: values must be an apache-arrow Vector, a typed array or an array, not a number/);
  assert.throws(() => withTopics(t, ["a", 1, null, null]), /withTopics: item 1 is a number, expected a string or null/);
  assert.throws(() => withErrors(t, [null]), /withErrors: 1 values for a batch of 4 rows/);
  assert.throws(() => withRowIndex({}), /withRowIndex's table must be an apache-arrow Table or RecordBatch, not an object/);
  // An Error is a message; a typed array and a Vector are columns as they are.
  const e = withErrors(t, [new RangeError("too cold"), undefined, null, "x"]);
  assert.deepEqual(e.getChild("_error").toArray(), ["RangeError: too cold", null, null, "x"]);
  assert.equal(String(withColumn(t, "i", new Int32Array(4)).getChild("i").type), "Int32");
  assert.equal(String(withColumn(t, "s", ["a", "b", "c", "d"], new Utf8()).getChild("s").type), "Utf8");
  assert.equal(withColumn(t, "v", makeVector(new Float32Array(4))).numCols, 3);
  // A RecordBatch is a table too.
  assert.equal(withRowIndex(t.batches[0]).getChild("_row").length, 4);
});

test("a bad result is refused as failed, naming what is wrong", () => {
  assert.match(refusal((t) => t).reason, /^output batch has no `_row` column \(add it with withRowIndex, withRows or takeRows/);
  assert.match(
    refusal((t) => withColumn(t, "_row", makeVector(new BigInt64Array([0n, 1n, 2n, 3n])))).reason,
    /output column `_row` must be uint32 or int32, found Int64/,
  );
  assert.match(
    refusal((t) => withRows(t, [0, 1, 2, 9])).reason,
    /`_row` names row 9 \(output row 3\), outside the input batch of 4 rows/,
  );
  assert.match(
    refusal((t) => withColumn(withRowIndex(t), "_topic", ["a", "b", "a", "b"])).reason,
    /output column `_topic` must be utf8, found Dictionary<Int32, Utf8> \(build it with withTopics\)/,
  );
  // An input column replaced with nulls keeps the schema's non-nullable field.
  const nulls = vectorFromArray([null, 1.5, null, 2], new arrow.Float64());
  assert.match(
    refusal((t) => withRowIndex(t.setChild("celsius", nulls))).reason,
    /output column `celsius` is declared non-nullable but has 2 null value\(s\)/,
  );
  const undef = refusal(columnar(function forgot(t) {
    withRowIndex(t);
  }));
  assert.equal(undef.kind, "failed");
  assert.match(undef.reason, /^forgot returned undefined; expected an apache-arrow Table .* \(a missing `return`\?\)$/);
  assert.match(refusal(async (t) => withRowIndex(t)).reason, /returned a Promise; columnar functions must be synchronous/);
  assert.match(refusal(() => [1, 2]).reason, /returned an array; expected an apache-arrow Table/);
  // An empty table needs no `_row`: nothing to map.
  assert.equal(call((t) => t.slice(0, 0), readings()).numRows, 0);
});

test("throws: InvalidInput refuses the batch as invalid-input, anything else as failed, with the location", () => {
  const bad = refusal(() => {
    throw new InvalidInput("no float64 column `celsius`");
  });
  assert.equal(bad.kind, "invalid-input");
  assert.match(bad.reason, /^no float64 column `celsius` \(at columnar\.test\.mjs:\d+\)$/);
  const boom = refusal(function boom(t) {
    return t.getChild("nope").toArray();
  });
  assert.equal(boom.kind, "failed");
  assert.match(boom.reason, /^TypeError: .*\(at columnar\.test\.mjs:\d+, in boom\)/);
  // The SDK's own frames are left out of the stack.
  assert.doesNotMatch(boom.reason, /pipeline-sdk-columnar\.js/);
  // A helper's misuse is the function's failure, located in its code.
  const misuse = refusal((t) => withErrors(t, ["x"]));
  assert.match(misuse.reason, /^RangeError: withErrors: 1 values for a batch of 4 rows \(at columnar\.test\.mjs:\d+/);
});

test("the component export: IPC bytes in and out, garbage refused, never a throw", () => {
  const c = _columnarComponent({ default: convert }, { file: FILE });
  const ok = c.columnarTransformer.transformColumns(tableToIPC(readings(), "stream"));
  assert.equal(ok.tag, "ok");
  assert.ok(ok.val instanceof Uint8Array);
  assert.deepEqual(tableFromIPC(ok.val).getChild("_topic").toArray(), [null, null, null, "alerts"]);
  const garbage = c.columnarTransformer.transformColumns(new Uint8Array([1, 2, 3]));
  assert.equal(garbage.tag, "err");
  assert.equal(garbage.val.tag, "invalid-input");
  assert.equal(garbage.val.val, "input batch is not an Arrow IPC stream: Error: no schema message");
  // Messages are clipped as the per-record SDK clips them.
  const long = _columnarComponent({ default: columnar(() => { throw new Error("x".repeat(10000)); }) }, { file: FILE });
  const clipped = long.columnarTransformer.transformColumns(tableToIPC(readings(), "stream"));
  assert.ok(clipped.val.val.length <= 3000, `${clipped.val.val.length}`);
  // An empty batch (the schema, no rows) is a batch like any other.
  const empty = c.columnarTransformer.transformColumns(tableToIPC(readings().slice(0, 0), "stream"));
  assert.equal(empty.tag, "ok");
  assert.equal(tableFromIPC(empty.val).numRows, 0);
});

test("a columnar build needs columnar(fn), and a per-record build refuses it", () => {
  assert.throws(
    () => _columnarComponent({ default: (t) => t }, { file: "conv.js" }),
    /conv\.js imports "pipeline-sdk\/columnar", so it is built as a columnar function .* must default-export columnar\(\(table\) => \{ \.\.\. \}\) \(found a function not wrapped in columnar\(\)\)/,
  );
  assert.throws(() => _columnarComponent({}, { file: "conv.js" }), /\(found undefined\)/);
  assert.throws(() => _component({ default: convert }, { file: "conv.js" }), /conv\.js default-exports a columnar function/);
  assert.equal(typeof transform, "function");
});

test("pointColumnarImports rewrites only the import's string, keeping lines", () => {
  const src = [
    "// import { x } from \"pipeline-sdk/columnar\" in a comment",
    "import { columnar } from 'pipeline-sdk/columnar';",
    "import { Table } from \"apache-arrow\";",
    "export { withRowIndex } from \"pipeline-sdk/columnar\";",
    "const s = \"pipeline-sdk/columnar\"; // é, 😀: offsets are UTF-16",
    "",
  ].join("\n");
  const out = pointColumnarImports(src).split("\n");
  assert.equal(out.length, 6);
  assert.equal(out[0], "// import { x } from \"pipeline-sdk/columnar\" in a comment");
  assert.equal(out[1], "import { columnar } from './pipeline-sdk-columnar.js';");
  assert.equal(out[2], "import { Table } from \"apache-arrow\";");
  assert.equal(out[3], "export { withRowIndex } from \"./pipeline-sdk-columnar.js\";");
  assert.equal(out[4], "const s = \"pipeline-sdk/columnar\"; // é, 😀: offsets are UTF-16");
});

test("bundleArrow writes one self-contained ES module with apache-arrow's whole API", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pipeline-arrow-bundle-"));
  try {
    const out = join(dir, "apache-arrow.js");
    const info = await bundleArrow(out);
    assert.equal(info.version, "21.2.0");
    assert.ok(info.bytes > 100_000, `${info.bytes} bytes`);
    // Loaded from a folder without node_modules: it imports nothing.
    const bundled = await import(pathToFileURL(out).href);
    assert.deepEqual(Object.keys(bundled).sort(), Object.keys(await import("apache-arrow/Arrow.dom")).sort());
    const t = bundled.tableFromIPC(tableToIPC(readings(), "stream"));
    assert.deepEqual(t.getChild("celsius").toArray(), new Float64Array([21.5, -40, -300, 100]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("precheck tells a columnar module from a per-record one and limits its imports", () => {
  const pre = join(here, "..", "tools", "precheck.mjs");
  const dir = mkdtempSync(join(tmpdir(), "pipeline-precheck-col-"));
  const check = (name, text, ...flags) => {
    writeFileSync(join(dir, name), text);
    return spawnSync(process.execPath, [pre, ...flags, join(dir, name)], { encoding: "utf8" });
  };
  try {
    let r = check("conv.js", 'import { columnar, withRowIndex } from "pipeline-sdk/columnar";\nimport { Int64 } from "apache-arrow";\nexport default columnar((t) => withRowIndex(t));\n', "--print-kind");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "columnar\n");
    r = check("rec.js", 'import { transform } from "pipeline-sdk";\nexport default transform((r) => r);\n', "--print-kind");
    assert.equal(r.stdout, "record\n");
    r = check("arrow.js", 'import { transform } from "pipeline-sdk";\nimport { Table } from "apache-arrow";\nexport default transform((r) => r);\n');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /arrow\.js:2: imports "apache-arrow", which the build bundles only into a columnar function/);
    r = check("typo.js", 'import { columnar, withRowIndx } from "pipeline-sdk/columnar";\nexport default columnar((t) => t);\n');
    assert.match(r.stderr, /typo\.js:1: SyntaxError: .*'pipeline-sdk\/columnar' does not provide an export named 'withRowIndx'/);
    r = check("arrowtypo.js", 'import { columnar } from "pipeline-sdk/columnar";\nimport { tableFromIPCX } from "apache-arrow";\nexport default columnar((t) => t);\n');
    assert.match(r.stderr, /does not provide an export named 'tableFromIPCX'/);
    r = check("lodash.js", 'import { columnar } from "pipeline-sdk/columnar";\nimport _ from "lodash";\nexport default columnar((t) => t);\n');
    assert.match(r.stderr, /lodash\.js:2: imports "lodash": only "pipeline-sdk", "pipeline-sdk\/columnar" and "apache-arrow" are available/);
    r = check("nodefault.js", 'import { columnar } from "pipeline-sdk/columnar";\nexport const f = columnar((t) => t);\n');
    assert.match(r.stderr, /export default columnar\(\(table\) => \{ \.\.\. \}\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Int64 columns arrive as BigInt, as apache-arrow reads them", () => {
  const t = tableFromArrays({ id: makeVector(new BigInt64Array([1n, 2n])) });
  assert.ok(t.getChild("id").type instanceof Int64);
  const out = call((x) => withRowIndex(x), t);
  assert.equal(out.getChild("id").get(1), 2n);
});
