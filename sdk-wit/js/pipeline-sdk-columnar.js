// pipeline-sdk/columnar: columnar functions in JavaScript, one call per batch
// over an Apache Arrow table (the WIT world
// `pipeline:transform/transform-columnar@0.2.0`). The counterpart of the Rust
// SDK's `columnar` feature.
//
//     import { columnar, withRowIndex } from "pipeline-sdk/columnar";
//     export default columnar((table) => withRowIndex(table));   // 1:1
//
// The worker decodes a batch of input records into one Arrow record batch of
// the pipeline's declared schema (row i = the batch's i-th input) and calls
// `transform-columns` once with it as an Arrow IPC stream. The function gets
// it as an apache-arrow `Table` and returns a `Table` (or `RecordBatch`): its
// output fields plus the mapping columns `_row` (required: which input row an
// output row comes from), `_topic` (optional routing) and `_error` (optional:
// dead-letters that row's input). See sdk-wit/js/README.md.
//
// `pipeline-sdk-js build` bundles apache-arrow (the version this package
// pins) into the component when a module imports "pipeline-sdk/columnar";
// per-record functions stay dependency-free.
import {
  DataType,
  makeVector,
  RecordBatchReader,
  Table,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
  isArrowRecordBatch,
  isArrowTable,
  isArrowVector,
} from "apache-arrow";
import { InvalidInput, log, _internals } from "./pipeline-sdk.js";

export { InvalidInput, log };

const { clip, describe, errorMessage, failure, location, setHostLog } = _internals;

/** The mapping column naming each output row's input row (uint32 or int32, non-null). */
export const ROW = "_row";
/** The optional mapping column routing a row to a declared output topic (utf8; null = the first). */
export const TOPIC = "_topic";
/** The optional mapping column whose non-null value dead-letters the row's input record (utf8). */
export const ERROR = "_error";

// Shared with pipeline-sdk.js (by name, so that module needs no import) so
// that a per-record build can refuse a columnar function with a clear message.
const COLUMNAR = Symbol.for("pipeline-sdk.columnar");

/**
 * Marks `fn(table)` as a columnar function and returns it unchanged, so tests
 * can call it directly (or through `call`, the worker's IPC path). The
 * module's default export: `export default columnar((table) => ...)`.
 */
export function columnar(fn) {
  if (typeof fn !== "function") {
    throw new TypeError(
      `columnar() needs a function: export default columnar((table) => { ... }), not ${describe(fn)}`,
    );
  }
  Object.defineProperty(fn, COLUMNAR, { value: true });
  return fn;
}

// ---------------------------------------------------------------------------
// helpers for the output batch

function asTable(t, what) {
  if (isArrowTable(t)) return t;
  if (isArrowRecordBatch(t)) return new Table(t);
  throw new TypeError(`${what} must be an apache-arrow Table or RecordBatch, not ${describe(t)}`);
}

function toVector(name, values, type) {
  if (isArrowVector(values)) return values;
  if (ArrayBuffer.isView(values) && !(values instanceof DataView) && type === undefined) {
    return makeVector(values);
  }
  if (values === null || typeof values !== "object" || typeof values[Symbol.iterator] !== "function") {
    throw new TypeError(`column \`${name}\`: values must be an apache-arrow Vector, a typed array or an array, not ${describe(values)}`);
  }
  return vectorFromArray(Array.from(values), type);
}

/**
 * `table` with one more column `name`, appended last. `values` is an
 * apache-arrow Vector, a typed array (`Float64Array` → float64, ...) or an
 * array (`type` says its Arrow type, e.g. `new Utf8()`; without it
 * apache-arrow infers one: numbers → float64, strings → dictionary-encoded
 * utf8). Refuses a name the table already has and a length that is not the
 * table's row count.
 */
export function withColumn(table, name, values, type) {
  table = asTable(table, "withColumn's table");
  if (typeof name !== "string" || name === "") throw new TypeError("withColumn needs a column name (a non-empty string)");
  if (table.schema.fields.some((f) => f.name === name)) {
    throw new Error(`output batch already has a column \`${name}\``);
  }
  const vector = toVector(name, values, type);
  if (vector.length !== table.numRows) {
    throw new RangeError(`column \`${name}\` has ${vector.length} values for a batch of ${table.numRows} rows`);
  }
  // A Table built from one vector declares it nullable only if it has
  // nulls, so `_row` comes out non-nullable, as the worker wants it.
  return table.assign(new Table({ [name]: vector }));
}

function rowIndices(what, rows) {
  if (rows === null || typeof rows !== "object" || typeof rows[Symbol.iterator] !== "function") {
    throw new TypeError(`${what}: rows must be an array of row numbers, not ${describe(rows)}`);
  }
  const out = Uint32Array.from(rows, (r, j) => {
    if (!Number.isInteger(r) || r < 0 || r > 0xffffffff) {
      throw new RangeError(`${what}: rows[${j}] is ${typeof r === "number" ? r : describe(r)}, not a row number (an integer >= 0)`);
    }
    return r;
  });
  return out;
}

/** A 1:1 output: `_row` = 0..n-1, so output row i is input row i. */
export function withRowIndex(table) {
  table = asTable(table, "withRowIndex's table");
  const rows = new Uint32Array(table.numRows);
  for (let i = 0; i < rows.length; i++) rows[i] = i;
  return withColumn(table, ROW, makeVector(rows));
}

/**
 * `table` with `_row` = `rows`: output row j comes from input row `rows[j]`.
 * For a table the function built itself (filtered, fanned out).
 */
export function withRows(table, rows) {
  return withColumn(table, ROW, makeVector(rowIndices("withRows", rows)));
}

/**
 * The input rows at `rows`, in that order (a row may repeat: fan-out; a row
 * left out is dropped), with `_row` set to match. `table` must not have a
 * `_row` column yet. Each run of consecutive rows is one slice of the input
 * (no copy); the result has a record batch per run, which the worker reads
 * as one stream.
 */
export function takeRows(table, rows) {
  table = asTable(table, "takeRows's table");
  const idx = rowIndices("takeRows", rows);
  const n = table.numRows;
  for (const r of idx) {
    if (r >= n) throw new RangeError(`row index ${r} is out of range for a batch of ${n} rows`);
  }
  const parts = [];
  for (let j = 0; j < idx.length; ) {
    let k = j + 1;
    while (k < idx.length && idx[k] === idx[k - 1] + 1) k++;
    parts.push(table.slice(idx[j], idx[k - 1] + 1));
    j = k;
  }
  const taken = parts.length === 0 ? table.slice(0, 0) : parts[0].concat(...parts.slice(1));
  return withColumn(taken, ROW, makeVector(idx));
}

/**
 * The input rows where `keep` is true, with `_row` naming them. `keep` is an
 * array (or typed array, or Bool Vector) with one value per row, `true` to
 * keep (null and anything else drop the row), or a function `(i) => boolean`.
 */
export function filterRows(table, keep) {
  table = asTable(table, "filterRows's table");
  const n = table.numRows;
  const rows = [];
  if (typeof keep === "function") {
    for (let i = 0; i < n; i++) if (keep(i)) rows.push(i);
  } else {
    const get = isArrowVector(keep) ? (i) => keep.get(i) : keep && typeof keep.length === "number" ? (i) => keep[i] : null;
    if (!get) throw new TypeError(`filterRows: keep must be an array of booleans or a function (i) => boolean, not ${describe(keep)}`);
    if (keep.length !== n) throw new RangeError(`filter mask has ${keep.length} values for a batch of ${n} rows`);
    for (let i = 0; i < n; i++) if (get(i) === true || get(i) === 1) rows.push(i);
  }
  return takeRows(table, rows);
}

function textColumn(what, values, n, fromError) {
  if (values === null || typeof values !== "object" || typeof values[Symbol.iterator] !== "function") {
    throw new TypeError(`${what}: expected an array with one string or null per row, not ${describe(values)}`);
  }
  const items = Array.from(values, (v, i) => {
    if (v === null || v === undefined) return null;
    if (typeof v === "string") return v;
    if (fromError && v instanceof Error) return errorMessage(v);
    throw new TypeError(`${what}: item ${i} is ${describe(v)}, expected a string or null`);
  });
  if (items.length !== n) throw new RangeError(`${what}: ${items.length} values for a batch of ${n} rows`);
  return vectorFromArray(items, new Utf8());
}

/**
 * `table` with `_topic`: a string routes that row to one of the pipeline's
 * declared output topics, null (or undefined) to its first output topic.
 */
export function withTopics(table, topics) {
  table = asTable(table, "withTopics's table");
  return withColumn(table, TOPIC, textColumn("withTopics", topics, table.numRows, false));
}

/**
 * `table` with `_error`: a string (or an Error) dead-letters that row's input
 * record with the message (kind `failed`); null (or undefined) leaves the
 * row alone. An input with an error on any of its rows produces none of them.
 */
export function withErrors(table, errors) {
  table = asTable(table, "withErrors's table");
  return withColumn(table, ERROR, textColumn("withErrors", errors, table.numRows, true));
}

// ---------------------------------------------------------------------------
// running the function

/**
 * What the worker would refuse anyway, with a message that says which helper
 * to use. Returns the problem, or null.
 */
function checkOutput(out, inputRows) {
  const fields = out.schema.fields;
  const at = (name) => fields.findIndex((f) => f.name === name);
  const r = at(ROW);
  if (r < 0) {
    if (out.numRows === 0) return null; // nothing to map
    return "output batch has no `_row` column (add it with withRowIndex, withRows or takeRows from pipeline-sdk/columnar)";
  }
  const type = fields[r].type;
  if (!(DataType.isInt(type) && type.bitWidth === 32)) {
    return `output column \`_row\` must be uint32 or int32, found ${type}`;
  }
  const rows = out.getChildAt(r);
  if (rows.nullCount > 0) return "output column `_row` has nulls (every output row must name its input row)";
  for (let i = 0; i < rows.length; i++) {
    const v = rows.get(i);
    if (v < 0 || v >= inputRows) {
      return `output column \`_row\` names row ${v} (output row ${i}), outside the input batch of ${inputRows} rows`;
    }
  }
  for (const name of [TOPIC, ERROR]) {
    const i = at(name);
    if (i >= 0 && !DataType.isUtf8(fields[i].type)) {
      return `output column \`${name}\` must be utf8, found ${fields[i].type} (build it with ${name === TOPIC ? "withTopics" : "withErrors"})`;
    }
  }
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    const nulls = f.nullable ? 0 : out.getChildAt(i).nullCount;
    if (nulls > 0) {
      // The worker's Arrow reader refuses it; most likely a column of the
      // input schema (non-nullable there) replaced with table.setChild.
      return `output column \`${f.name}\` is declared non-nullable but has ${nulls} null value(s); add it under a new name with withColumn, which declares it nullable`;
    }
  }
  return null;
}

/** The worker's IPC stream as a Table; one without a schema message is refused. */
function readIpc(bytes) {
  const reader = RecordBatchReader.from(bytes);
  reader.open();
  // apache-arrow reads bytes that are no stream at all as an empty one.
  if (!reader.schema) throw new Error("no schema message");
  return new Table(reader.schema, reader.readAll());
}

function err(kind, message) {
  return { tag: "err", val: { tag: kind, val: clip(message) } };
}

/**
 * Runs columnar function `fn` on one IPC stream and returns the WIT result as
 * componentize-js 0.23 wants it: `{tag: "ok", val: Uint8Array}` (an Arrow IPC
 * stream) or `{tag: "err", val: {tag: "invalid-input" | "failed", val:
 * message}}`. It never throws (a throw would trap the instance).
 */
export function _runColumns(fn, bytes, customerFile, fnName) {
  try {
    let input;
    try {
      input = readIpc(bytes);
    } catch (e) {
      return err("invalid-input", `input batch is not an Arrow IPC stream: ${errorMessage(e)}`);
    }
    let result;
    try {
      result = fn(input);
    } catch (e) {
      if (e instanceof InvalidInput) return err("invalid-input", e.message + location(e, customerFile));
      return err("failed", failure(e, customerFile));
    }
    if (result && typeof result.then === "function") {
      result.then(
        () => {},
        () => {},
      );
      return err("failed", `${fnName} returned a Promise; columnar functions must be synchronous (no async/await)`);
    }
    let out;
    if (isArrowTable(result)) out = result;
    else if (isArrowRecordBatch(result)) out = new Table(result);
    else {
      const hint = result === undefined ? " (a missing `return`?)" : "";
      return err(
        "failed",
        `${fnName} returned ${describe(result)}; expected an apache-arrow Table (or RecordBatch) with a \`_row\` column, e.g. withRowIndex(table)${hint}`,
      );
    }
    const bad = checkOutput(out, input.numRows);
    if (bad) return err("failed", bad);
    let encoded;
    try {
      encoded = tableToIPC(out, "stream");
    } catch (e) {
      return err("failed", `could not encode the output batch as Arrow IPC: ${errorMessage(e)}`);
    }
    return { tag: "ok", val: encoded };
  } catch (e) {
    return err("failed", "pipeline-sdk internal error: " + errorMessage(e));
  }
}

/** Thrown by `call` when the function (or the SDK's checks) refuses the batch. */
export class BatchRefused extends Error {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.name = "BatchRefused";
    /** "invalid-input" or "failed", the WIT transform-error the worker would get. */
    this.kind = kind;
    /** The message the worker would put in the dead letters. */
    this.reason = message;
  }
}

/**
 * Calls columnar function `fn` on `input` (a Table or RecordBatch) exactly as
 * the worker does, through Arrow IPC both ways, for unit tests on Node:
 * returns the output Table the worker would decode, or throws BatchRefused.
 */
export function call(fn, input, { file } = {}) {
  const bytes = tableToIPC(asTable(input, "call's input"), "stream");
  const name = fn && fn.name ? fn.name : "the columnar function";
  const result = _runColumns(fn, bytes, file, name);
  if (result.tag === "err") throw new BatchRefused(result.val.tag, result.val.val);
  return tableFromIPC(result.val);
}

/**
 * The component's export, built by the entry module that `pipeline-sdk-js
 * build` generates for a module importing "pipeline-sdk/columnar":
 *
 *     import { log as hostLog } from "pipeline:transform/host@0.2.0";
 *     import { _columnarComponent } from "./pipeline-sdk-columnar.js";
 *     import * as customer from "./convert.js";
 *     const c = _columnarComponent(customer, { hostLog, file: "convert.js" });
 *     export const columnarTransformer = c.columnarTransformer;
 *
 * It runs at build time (pre-initialisation), so a module without a usable
 * default export fails the build with this message.
 */
export function _columnarComponent(customerModule, { hostLog, file } = {}) {
  const fn = customerModule && customerModule.default;
  if (typeof fn !== "function" || !fn[COLUMNAR]) {
    throw new TypeError(
      `${file || "the customer module"} imports "pipeline-sdk/columnar", so it is built as a columnar function ` +
        `(world transform-columnar): it must default-export columnar((table) => { ... }) ` +
        `(found ${typeof fn === "function" ? "a function not wrapped in columnar()" : describe(fn)})`,
    );
  }
  setHostLog(hostLog);
  const fnName =
    fn.name && fn.name !== "default" ? fn.name : `the columnar function of ${file || "the customer module"}`;
  return {
    columnarTransformer: {
      transformColumns(batch) {
        return _runColumns(fn, batch, file, fnName);
      },
    },
  };
}
