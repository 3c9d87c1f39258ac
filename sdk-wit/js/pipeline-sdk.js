// pipeline-sdk: write a pipeline-worker transform function in JavaScript.
//
//     import { transform } from "pipeline-sdk";
//     export default transform((record) => {
//       record.fields.seen = true;
//       return record;
//     });
//
// `scripts/build-js.sh SRC.js OUT.wasm` turns the customer module into a
// WebAssembly component (componentize-js / StarlingMonkey) for the WIT world
// `pipeline:transform/transform-batch@0.2.0` (sdk-wit/wit/transform.wit).
// See sdk-wit/js/README.md.
//
// This module has no imports, so it also runs on plain Node (unit tests,
// tools/run_local.mjs). The WIT `host.log` import is handed in by the entry
// module that the build script generates (see `_component`).

export const VERSION = "0.2.0";
/** The WIT package this SDK targets. */
export const WIT_PACKAGE = "pipeline:transform@0.2.0";

/** Longest error message handed to the host (it goes into dead-letter headers). */
// Longest error message handed to the host (the dead letter's
// `pw.error.message`; the worker keeps 3 KiB of guest text). A longer one
// keeps its first MESSAGE_HEAD characters (the exception and where it was
// thrown) and its end.
export const MAX_MESSAGE = 3000;
const MESSAGE_HEAD = 1000;
// Stack frames kept after the message.
const MAX_STACK_FRAMES = 50;

const ENCODER = new TextEncoder();

// ---------------------------------------------------------------------------
// errors

/**
 * Throw it to refuse a record as `invalid-input` (the record itself is bad).
 * Any other thrown value is reported as `failed`.
 */
export class InvalidInput extends Error {
  constructor(message) {
    super(message);
    this.name = "InvalidInput";
  }
}

/** A required field is missing (or null): `record.require("x")`. */
export class MissingField extends InvalidInput {
  constructor(field) {
    super(`missing field '${field}'`);
    this.name = "MissingField";
    this.field = field;
  }
}

/** `record.fields` holds something JSON cannot encode (NaN, a BigInt, a cycle...). */
export class EncodeError extends Error {
  constructor(message) {
    super(message);
    this.name = "EncodeError";
  }
}

// ---------------------------------------------------------------------------
// bytes

function describe(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") {
    const ctor = v.constructor && v.constructor.name;
    return ctor && ctor !== "Object" ? `a ${ctor}` : "an object";
  }
  return typeof v === "undefined" ? "undefined" : `a ${typeof v}`;
}

/** A string (UTF-8 encoded), Uint8Array, other typed array / ArrayBuffer, or array of bytes, as a Uint8Array. */
function toBytes(what, v) {
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") return ENCODER.encode(v);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v) && v.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
    return Uint8Array.from(v);
  }
  throw new TypeError(`${what} must be a string or a Uint8Array, not ${describe(v)}`);
}

function decodeUtf8(what, bytes, fatal) {
  try {
    return new TextDecoder("utf-8", { fatal }).decode(bytes);
  } catch (e) {
    throw new InvalidInput(`${what} is not valid JSON: not UTF-8 text`);
  }
}

function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------
// JSON

function jsonKind(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v; // string, number, boolean
}

function parseObject(bytes) {
  if (bytes === null) {
    throw new InvalidInput(
      "record value is null (a tombstone), not a JSON object; check `record.value === null` before reading record.fields",
    );
  }
  if (bytes.length === 0) {
    throw new InvalidInput(
      "record value is empty, not a JSON object; use record.value for non-JSON payloads",
    );
  }
  const text = decodeUtf8("record value", bytes, true);
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new InvalidInput(`record value is not valid JSON: ${e && e.message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new InvalidInput(
      `record value is JSON but not an object (it is a JSON ${jsonKind(parsed)}); use record.value for other payloads`,
    );
  }
  return parsed;
}

/** Compact JSON, refusing what JSON.stringify would silently turn into null. */
function encodeFields(fields) {
  let text;
  try {
    text = JSON.stringify(fields, function (key, value) {
      if (typeof value === "number" && !Number.isFinite(value)) {
        const where = key === "" ? "the value" : `field '${key}'`;
        throw new EncodeError(
          `record.fields cannot be encoded as JSON: ${where} is ${value} ` +
            "(NaN and Infinity are not JSON; was it computed from a missing field, which reads as undefined?)",
        );
      }
      if (value !== null && typeof value === "object" && (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof Map || value instanceof Set)) {
        const what = value.constructor ? value.constructor.name : "object";
        throw new EncodeError(
          `record.fields cannot be encoded as JSON: field '${key}' is a ${what}` +
            (what === "Map" || what === "Set" ? "; convert it with Object.fromEntries(...) or Array.from(...)" : "; JSON has no bytes: decode it (new TextDecoder().decode(...)) or use Array.from(...)"),
        );
      }
      if (typeof value === "bigint") {
        throw new EncodeError(
          `record.fields cannot be encoded as JSON: field '${key}' is a BigInt; convert it with Number(...) or String(...)`,
        );
      }
      return value;
    });
  } catch (e) {
    if (e instanceof EncodeError) throw e;
    // A cycle ("cyclic object value"), a throwing toJSON, too deep, ...
    throw new EncodeError(`record.fields cannot be encoded as JSON: ${e && e.message}`);
  }
  if (typeof text !== "string") {
    throw new EncodeError("record.fields cannot be encoded as JSON");
  }
  return ENCODER.encode(text);
}

function deepCopy(v) {
  if (Array.isArray(v)) return v.map(deepCopy);
  if (v !== null && typeof v === "object") {
    if (ArrayBuffer.isView(v)) return v.slice();
    const out = {};
    for (const k of Object.keys(v)) out[k] = deepCopy(v[k]);
    return out;
  }
  return v;
}

function isPlainObject(v) {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

// ---------------------------------------------------------------------------
// headers

/**
 * Kafka headers: an ordered list of [key, value] pairs that may repeat a key.
 * Values are Uint8Array; setters also take strings (UTF-8) and null (Kafka's
 * null header value, sent as an empty value).
 */
export class Headers {
  constructor(items) {
    this._items = [];
    if (items === undefined || items === null) return;
    if (items instanceof Headers) {
      this._items = items._items.map(([k, v]) => [k, v]);
      return;
    }
    const pairs =
      typeof items[Symbol.iterator] === "function" ? items : Object.entries(items);
    for (const pair of pairs) {
      if (Array.isArray(pair) && pair.length === 2) this.add(pair[0], pair[1]);
      else if (pair && typeof pair === "object" && "key" in pair) this.add(pair.key, pair.value);
      else throw new TypeError(`headers must be [key, value] pairs, got ${describe(pair)}`);
    }
  }

  static _check(key, value) {
    if (typeof key !== "string") {
      throw new TypeError(`header key must be a string, not ${describe(key)}`);
    }
    if (value === null || value === undefined) return [key, new Uint8Array(0)];
    return [key, toBytes(`header '${key}' value`, value)];
  }

  /** Appends one header. */
  add(key, value) {
    this._items.push(Headers._check(key, value));
    return this;
  }
  /** Replaces every `key` header with one. */
  set(key, value) {
    const pair = Headers._check(key, value);
    this._items = this._items.filter(([k]) => k !== key);
    this._items.push(pair);
    return this;
  }
  /** The last value of `key` (Uint8Array), or undefined. */
  get(key) {
    for (let i = this._items.length - 1; i >= 0; i--) {
      if (this._items[i][0] === key) return this._items[i][1];
    }
    return undefined;
  }
  /** The last value of `key` decoded as UTF-8, or undefined. */
  getText(key) {
    const v = this.get(key);
    return v === undefined ? undefined : new TextDecoder().decode(v);
  }
  /** Every value of `key`, in order. */
  getAll(key) {
    return this._items.filter(([k]) => k === key).map(([, v]) => v);
  }
  has(key) {
    return this._items.some(([k]) => k === key);
  }
  /** Removes every `key` header; true if there was one. */
  delete(key) {
    const n = this._items.length;
    this._items = this._items.filter(([k]) => k !== key);
    return this._items.length !== n;
  }
  keys() {
    return this._items.map(([k]) => k);
  }
  entries() {
    return this._items.map(([k, v]) => [k, v]);
  }
  [Symbol.iterator]() {
    return this.entries()[Symbol.iterator]();
  }
  get size() {
    return this._items.length;
  }
  /** {key: last value as text}, handy for logging. */
  toJSON() {
    const out = {};
    for (const [k, v] of this._items) out[k] = new TextDecoder().decode(v);
    return out;
  }
}

// ---------------------------------------------------------------------------
// record

const NOT_PARSED = Symbol("not parsed");

function checkTimestamp(ts) {
  if (ts === null || ts === undefined) return null;
  if (typeof ts === "bigint") return Number(ts);
  if (ts instanceof Date) return ts.getTime();
  if (typeof ts !== "number" || !Number.isSafeInteger(ts)) {
    throw new TypeError(
      `record timestamp must be integer milliseconds (or a Date, or null), not ${typeof ts === "number" ? ts : describe(ts)}`,
    );
  }
  return ts;
}

function int64(v) {
  // s64 arrives as a BigInt; a Number is easier to use and exact up to 2^53.
  if (typeof v === "bigint") {
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : v;
  }
  return v;
}

/**
 * One Kafka record, as consumed and as it will be produced.
 *
 * Input metadata (read-only by convention): `topic`, `partition`, `offset`.
 * Kept on output unless changed: `key` (Uint8Array or null), `headers`
 * (Headers), `timestamp` (ms since the epoch, or null).
 * Payload: `fields` (the value as a JSON object, parsed lazily) or `value`
 * (the bytes; assigning it replaces the payload and discards `fields`).
 * A tombstone (a Kafka null value, WIT 0.2 `option<list<u8>>` none) has
 * `value === null`, distinct from an empty Uint8Array; `fields` of a
 * tombstone throws InvalidInput (never `{}`); `record.value = null` emits one.
 * Routing: `record.to("topic")` sets the output topic and returns the record.
 */
export class Record {
  /**
   * A new record (e.g. an extra output for fan-out).
   * @param value string | Uint8Array (default empty) | null (a tombstone)
   * @param opts {key, headers, timestamp, fields, topic, partition, offset}
   */
  constructor(value = new Uint8Array(0), opts = {}) {
    this._value = value === null ? null : toBytes("record value", value);
    this._fields = NOT_PARSED;
    this._fieldsReplaced = false;
    this._outputTopic = null;
    this.key = opts.key ?? null;
    this.headers = opts.headers ?? [];
    this.timestamp = opts.timestamp ?? null;
    this.topic = opts.topic ?? "";
    this.partition = opts.partition ?? -1;
    this.offset = opts.offset ?? -1;
    if (opts.fields !== undefined) this.fields = opts.fields;
  }

  /** A new record whose value is `fields` encoded as JSON. */
  static fromFields(fields, opts = {}) {
    return new Record(undefined, { ...opts, fields });
  }

  /** A new tombstone (null value), e.g. `Record.tombstone({ key: record.key })`. */
  static tombstone(opts = {}) {
    return new Record(null, opts);
  }

  /** @internal from a WIT input-record (jco gives an absent option as undefined) */
  static _fromInput(input) {
    const r = Object.create(Record.prototype);
    r._value = input.value === undefined || input.value === null ? null : input.value;
    r._fields = NOT_PARSED;
    r._fieldsReplaced = false;
    r._outputTopic = null;
    r._key = input.key ?? null;
    const h = Object.create(Headers.prototype);
    h._items = (input.headers || []).map((x) => [x.key, x.value]);
    r._headers = h;
    r._timestamp = input.timestamp === undefined || input.timestamp === null ? null : Number(input.timestamp);
    r.topic = input.topic;
    r.partition = input.partition;
    r.offset = int64(input.offset);
    return r;
  }

  // -- key / headers / timestamp -------------------------------------------
  /** Uint8Array or null; assign a string (UTF-8), bytes or null. */
  get key() {
    return this._key;
  }
  set key(k) {
    this._key = k === null || k === undefined ? null : toBytes("record key", k);
  }
  /** The key decoded as UTF-8, or null. */
  get keyText() {
    return this._key === null ? null : new TextDecoder().decode(this._key);
  }
  get headers() {
    return this._headers;
  }
  set headers(h) {
    this._headers = new Headers(h); // a copy, also of a Headers
  }
  /** Milliseconds since the epoch (a Number), or null. */
  get timestamp() {
    return this._timestamp;
  }
  set timestamp(ts) {
    this._timestamp = checkTimestamp(ts);
  }

  // -- payload ---------------------------------------------------------------
  /**
   * The value as a JSON object, parsed on first access. Throws InvalidInput
   * (the record goes to the dead-letter topic as `invalid-input`) if the value
   * is not a JSON object, or is null (a tombstone). A field that is not there reads as `undefined`; use
   * `record.require("x")` to refuse the record instead.
   */
  get fields() {
    if (this._fields === NOT_PARSED) this._fields = parseObject(this._value);
    return this._fields;
  }
  set fields(f) {
    if (!isPlainObject(f)) {
      throw new TypeError(`record.fields must be a plain object, not ${describe(f)}`);
    }
    this._fields = f;
    this._fieldsReplaced = true;
  }

  /**
   * The value of field `path` (dots walk nested objects: "context.tier").
   * Throws MissingField (`invalid-input: missing field 'path'`) if it is
   * absent or null; with `type` ("number", "string", "boolean", "object",
   * "array"), throws InvalidInput if the value has another type.
   */
  require(path, type) {
    let v = this.fields;
    for (const part of String(path).split(".")) {
      if (v === null || typeof v !== "object" || Array.isArray(v) || !Object.prototype.hasOwnProperty.call(v, part)) {
        throw new MissingField(path);
      }
      v = v[part];
    }
    if (v === null || v === undefined) throw new MissingField(path);
    if (type !== undefined) {
      const actual = Array.isArray(v) ? "array" : typeof v;
      if (actual !== type) {
        throw new InvalidInput(`field '${path}' must be a ${type}, not a JSON ${actual}`);
      }
    }
    return v;
  }

  /** The payload bytes; if `fields` was changed, its JSON encoding; null for a tombstone. */
  get value() {
    return this._outputValue();
  }
  /** A string (UTF-8), bytes, or null to emit a tombstone (undefined is refused: likely a bug). */
  set value(v) {
    this._value = v === null ? null : toBytes("record value", v);
    this._fields = NOT_PARSED;
    this._fieldsReplaced = false;
  }
  /** True if the value is null (a Kafka tombstone). */
  get isTombstone() {
    return this._fields === NOT_PARSED && this._value === null;
  }
  /** The payload decoded as UTF-8 (invalid bytes become U+FFFD); null for a tombstone. */
  get text() {
    const v = this._outputValue();
    return v === null ? null : new TextDecoder().decode(v);
  }

  _outputValue() {
    const f = this._fields;
    if (f === NOT_PARSED) return this._value;
    const encoded = encodeFields(f);
    if (this._fieldsReplaced || this._value === null) return encoded;
    // Only read? Then keep the original bytes (whitespace, key order, escapes,
    // `1.50`), after checking that nothing was changed in place.
    const original = ENCODER.encode(JSON.stringify(JSON.parse(new TextDecoder().decode(this._value))));
    return bytesEqual(encoded, original) ? this._value : encoded;
  }

  // -- routing ---------------------------------------------------------------
  /**
   * Routes this record to output topic `topic` (one of the pipeline's
   * declared outputs, else the input goes to the dead-letter topic) and
   * returns it. For several topics, route copies: `[record, record.copy().to("audit")]`.
   */
  to(topic) {
    if (typeof topic !== "string" || topic === "") {
      throw new TypeError("record.to() needs a non-empty topic name (a string)");
    }
    this._outputTopic = topic;
    return this;
  }
  /** The topic set by `to()`, or null for the pipeline's default output topic. */
  get outputTopic() {
    return this._outputTopic;
  }

  /** An independent copy (fields deep-copied), e.g. for fan-out. */
  copy() {
    const r = Object.create(Record.prototype);
    r._key = this._key;
    r._headers = new Headers(this._headers);
    r._timestamp = this._timestamp;
    r._value = this._value;
    r._fields = this._fields === NOT_PARSED ? NOT_PARSED : deepCopy(this._fields);
    r._fieldsReplaced = this._fieldsReplaced;
    r._outputTopic = this._outputTopic;
    r.topic = this.topic;
    r.partition = this.partition;
    r.offset = this.offset;
    return r;
  }

  /** @internal the WIT output-record */
  _toOutput() {
    return {
      key: this._key === null ? undefined : this._key,
      value: this._outputValue() ?? undefined, // none: a tombstone
      headers: this._headers._items.map(([key, value]) => ({ key, value })),
      topic: this._outputTopic === null ? undefined : this._outputTopic,
      timestamp: this._timestamp === null ? undefined : BigInt(this._timestamp),
    };
  }
}

// ---------------------------------------------------------------------------
// logging

const LEVELS = ["trace", "debug", "info", "warn", "error"];

function defaultSink(level, message) {
  // Plain Node (tests, run_local): stderr.
  if (typeof console !== "undefined" && console.error) console.error(`[${level}] ${message}`);
}

let sink = defaultSink;

function formatArg(a) {
  if (typeof a === "string") return a;
  if (a instanceof Error) return `${a.name}: ${a.message}`;
  if (a instanceof Uint8Array) return new TextDecoder().decode(a);
  if (a !== null && typeof a === "object") {
    try {
      const s = JSON.stringify(a, (k, v) => (typeof v === "bigint" ? v.toString() : v));
      if (s !== undefined) return s;
    } catch (e) {
      /* fall through */
    }
  }
  return String(a);
}

function emit(level, args) {
  try {
    sink(level, args.map(formatArg).join(" "));
  } catch (e) {
    /* logging never breaks a transform */
  }
}

/**
 * Logging to the worker's log through the WIT `host.log` import:
 * `log.info("enriched", n, "fields")` (arguments joined by spaces; objects as
 * JSON). The host attributes, rate-limits and truncates each line. On plain
 * Node lines go to stderr.
 */
export const log = {
  trace: (...args) => emit("trace", args),
  debug: (...args) => emit("debug", args),
  info: (...args) => emit("info", args),
  warn: (...args) => emit("warn", args),
  warning: (...args) => emit("warn", args),
  error: (...args) => emit("error", args),
  /** Redirects lines to `fn(level, message)` (tests); null resets. */
  setSink(fn) {
    sink = fn || defaultSink;
  },
};

// ---------------------------------------------------------------------------
// the transform function

/**
 * Marks `fn(record)` as the transform function and returns it unchanged, so
 * tests can call it directly. The customer module's default export:
 * `export default transform((record) => ...)`.
 *
 * `fn` returns a Record (one output), null (drop the record), an array of
 * Records (fan-out, in order), or throws (InvalidInput → `invalid-input`,
 * anything else → `failed`).
 */
export function transform(fn) {
  if (typeof fn !== "function") {
    throw new TypeError(
      `transform() needs a function: export default transform((record) => { ... }), not ${describe(fn)}`,
    );
  }
  return fn;
}

function clip(message) {
  if (message.length <= MAX_MESSAGE) return message;
  const marker = (n) => `\n... [${n} characters cut] ...\n`;
  const tail = MAX_MESSAGE - MESSAGE_HEAD - marker(message.length).length;
  const cut = message.length - MESSAGE_HEAD - tail;
  return message.slice(0, MESSAGE_HEAD) + marker(cut) + message.slice(message.length - tail);
}

/** The thrown value's stack, one frame a line, without the SDK's own frames. */
function stackOf(e) {
  let stack;
  try {
    stack = e && typeof e === "object" ? e.stack : undefined;
  } catch (x) {
    return "";
  }
  if (typeof stack !== "string") return "";
  // V8 starts the stack with the message again; SpiderMonkey does not.
  const head = errorMessage(e);
  if (stack.startsWith(head)) stack = stack.slice(head.length);
  return stack
    .split("\n")
    .map((l) => l.trimEnd())
    .filter((l) => l && !/pipeline-sdk(-columnar)?\.js:\d+/.test(l))
    .slice(0, MAX_STACK_FRAMES)
    .join("\n");
}

/** `Type: message (at file.js:LINE, in fn)`, then the stack. */
function failure(e, customerFile) {
  const first = errorMessage(e) + location(e, customerFile);
  const stack = stackOf(e);
  return stack ? `${first}\n${stack}` : first;
}

/** ` (at enrich.js:7:5, in fn)` for the innermost frame in the customer's file. */
function location(err, customerFile) {
  let stack;
  try {
    stack = err && typeof err === "object" ? err.stack : undefined;
  } catch (e) {
    return "";
  }
  if (typeof stack !== "string" || !customerFile) return "";
  for (const line of stack.split("\n")) {
    // SpiderMonkey: `name@file:line:col`; V8: `    at name (file:line:col)` / `    at file:line:col`.
    let m = /^\s*(.*?)@(.*):(\d+):(\d+)\s*$/.exec(line);
    let name, file, lineNo;
    if (m) {
      [, name, file, lineNo] = m;
    } else {
      m = /^\s*at (?:(.*?) \()?(.*):(\d+):(\d+)\)?\s*$/.exec(line);
      if (!m) continue;
      [, name, file, lineNo] = m;
    }
    const base = file.split("/").pop().split("?")[0];
    if (base !== customerFile) continue;
    name = (name || "").replace(/^async\*/, "").split("/").pop();
    const fnName = name && !/^(default|<anonymous>|Object\.<anonymous>)$/.test(name) ? `, in ${name}` : "";
    return ` (at ${base}:${lineNo}${fnName})`;
  }
  return "";
}

function errorMessage(e) {
  if (e instanceof Error || (e && typeof e === "object" && typeof e.name === "string" && "message" in e)) {
    let name, message;
    try {
      name = String(e.name || "Error");
      message = String(e.message ?? "");
    } catch (x) {
      return "<unprintable error>";
    }
    return message ? `${name}: ${message}` : name;
  }
  let text;
  try {
    text = typeof e === "string" ? JSON.stringify(e) : String(e);
  } catch (x) {
    text = "<unprintable>";
  }
  return `non-Error value thrown: ${text}`;
}

class BadReturn extends Error {}

function outputsOf(result, fnName) {
  if (result instanceof Record) return [result];
  if (result === null) return [];
  if (result === undefined) {
    throw new BadReturn(
      `${fnName} returned undefined; return the record, null (to drop the record) or an array of records (a missing \`return\`?)`,
    );
  }
  if (Array.isArray(result) || (typeof result === "object" && typeof result[Symbol.iterator] === "function")) {
    const items = Array.from(result);
    const seen = new Set();
    items.forEach((item, i) => {
      if (!(item instanceof Record)) {
        throw new BadReturn(`${fnName} returned an array whose item ${i} is ${describe(item)}; expected only Record objects`);
      }
      if (seen.has(item)) {
        throw new BadReturn(
          `${fnName} returned the same Record object twice in its array (item ${i}); return record.copy() for each extra output`,
        );
      }
      seen.add(item);
    });
    return items;
  }
  const hint = isPlainObject(result) ? " (to change the value, set record.fields and return the record)" : "";
  throw new BadReturn(
    `${fnName} returned ${describe(result)}; expected a Record, null (to drop the record) or an array of Records${hint}`,
  );
}

function err(kind, message) {
  return { tag: "err", val: { tag: kind, val: clip(message) } };
}

/**
 * Runs the customer function on one WIT input-record and returns the WIT
 * `transform-result` as componentize-js 0.23 wants it: `{tag: "ok", val:
 * [output-record...]}` or `{tag: "err", val: {tag: "invalid-input" |
 * "failed", val: message}}`. It never throws (a throw would trap the instance).
 */
export function _run(fn, input, customerFile, fnName) {
  try {
    const record = Record._fromInput(input);
    let outs;
    try {
      const result = fn(record);
      if (result && typeof result.then === "function") {
        // An async function: there is no event loop to wait on for one record.
        result.then(
          () => {},
          () => {},
        );
        return err(
          "failed",
          `${fnName} returned a Promise; transform functions must be synchronous (no async/await)`,
        );
      }
      outs = outputsOf(result, fnName);
    } catch (e) {
      if (e instanceof BadReturn) return err("failed", e.message);
      if (e instanceof InvalidInput) return err("invalid-input", e.message + location(e, customerFile));
      return err("failed", failure(e, customerFile));
    }
    try {
      return { tag: "ok", val: outs.map((r) => r._toOutput()) };
    } catch (e) {
      if (e instanceof EncodeError) return err("failed", e.message);
      return err("failed", errorMessage(e));
    }
  } catch (e) {
    return err("failed", "pipeline-sdk internal error: " + errorMessage(e));
  }
}

/**
 * The component's exports, built by the entry module that scripts/build-js.sh
 * generates:
 *
 *     import { log as hostLog } from "pipeline:transform/host@0.2.0";
 *     import { _component } from "pipeline-sdk";
 *     import * as customer from "./enrich.js";
 *     const c = _component(customer, { hostLog, file: "enrich.js" });
 *     export const transformer = c.transformer;
 *     export const batchTransformer = c.batchTransformer;
 *
 * It runs at build time (pre-initialisation), so a module without a usable
 * default export fails the build with this message.
 */
export function _component(customerModule, { hostLog, file } = {}) {
  const fn = customerModule && customerModule.default;
  if (typeof fn !== "function") {
    throw new TypeError(
      `${file || "the customer module"} must default-export its transform function: ` +
        `export default transform((record) => { ... }) (found ${describe(fn)})`,
    );
  }
  if (fn[Symbol.for("pipeline-sdk.columnar")]) {
    // pipeline-sdk-columnar.js marks it; only a module importing that is
    // built for the columnar world.
    throw new TypeError(
      `${file || "the customer module"} default-exports a columnar function (columnar(...)), which is built for the columnar world only when the file itself imports "pipeline-sdk/columnar"`,
    );
  }
  if (hostLog) log.setSink((level, message) => hostLog(level, message));
  const fnName =
    fn.name && fn.name !== "default" ? fn.name : `the transform function of ${file || "the customer module"}`;
  return {
    transformer: {
      transform(input) {
        return _run(fn, input, file, fnName);
      },
    },
    batchTransformer: {
      transformBatch(inputs) {
        return inputs.map((input) => _run(fn, input, file, fnName));
      },
    },
  };
}

/**
 * @internal What the columnar entry point (pipeline-sdk-columnar.js) shares
 * with this module, so that both report errors and log the same way.
 */
export const _internals = {
  clip,
  describe,
  errorMessage,
  failure,
  location,
  setHostLog(hostLog) {
    if (hostLog) log.setSink((level, message) => hostLog(level, message));
  },
};

export default { transform, Record, Headers, InvalidInput, MissingField, log };
