// Types of pipeline-sdk.js (the pipeline-worker JavaScript SDK).
// TypeScript customers: map the module name in tsconfig.json,
//   "compilerOptions": { "paths": { "pipeline-sdk": ["<repo>/sdk-wit/js/pipeline-sdk.d.ts"] } }
// See sdk-wit/js/README.md.

/** Anything the SDK turns into bytes: strings are UTF-8 encoded. */
export type BytesLike = string | Uint8Array | ArrayBuffer | ArrayBufferView | number[];

/** A JSON value as `JSON.parse` returns it. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The record value parsed as a JSON object. Missing fields read as `undefined`. */
export type Fields = { [key: string]: any };

export const VERSION: string;
/** The WIT package this SDK targets: "pipeline:transform@0.2.0". */
export const WIT_PACKAGE: string;
/** Longest error message handed to the host (2000). */
export const MAX_MESSAGE: number;

/** Throw it to refuse a record as `invalid-input`; anything else thrown is `failed`. */
export class InvalidInput extends Error {
  constructor(message: string);
}

/** Thrown by `record.require(path)`: `invalid-input: missing field 'path'`. */
export class MissingField extends InvalidInput {
  constructor(field: string);
  readonly field: string;
}

/** `record.fields` holds something JSON cannot encode (NaN, a BigInt, bytes, a cycle, ...). */
export class EncodeError extends Error {}

/** Kafka headers: ordered `[key, value]` pairs that may repeat a key. */
export class Headers implements Iterable<[string, Uint8Array]> {
  constructor(
    items?:
      | Headers
      | Iterable<[string, BytesLike | null]>
      | Iterable<{ key: string; value: BytesLike | null }>
      | { [key: string]: BytesLike | null },
  );
  /** Appends one header (null = Kafka's null value, sent as empty bytes). */
  add(key: string, value: BytesLike | null): this;
  /** Replaces every `key` header with one. */
  set(key: string, value: BytesLike | null): this;
  /** The last value of `key`. */
  get(key: string): Uint8Array | undefined;
  /** The last value of `key` decoded as UTF-8. */
  getText(key: string): string | undefined;
  getAll(key: string): Uint8Array[];
  has(key: string): boolean;
  /** Removes every `key` header; true if there was one. */
  delete(key: string): boolean;
  keys(): string[];
  entries(): [string, Uint8Array][];
  [Symbol.iterator](): Iterator<[string, Uint8Array]>;
  readonly size: number;
  toJSON(): { [key: string]: string };
}

export interface RecordOptions {
  key?: BytesLike | null;
  headers?: ConstructorParameters<typeof Headers>[0];
  /** Milliseconds since the epoch (or a Date). */
  timestamp?: number | bigint | Date | null;
  fields?: Fields;
  topic?: string;
  partition?: number;
  offset?: number | bigint;
}

/** One Kafka record, as consumed and as it will be produced. */
export class Record {
  /** A new record, e.g. an extra output for fan-out (empty key and headers unless given); `null` value = a tombstone. */
  constructor(value?: BytesLike | null, opts?: RecordOptions);
  /** A new record whose value is `fields` encoded as JSON. */
  static fromFields(fields: Fields, opts?: Omit<RecordOptions, "fields">): Record;
  /** A new tombstone (null value), e.g. `Record.tombstone({ key: record.key })`. */
  static tombstone(opts?: Omit<RecordOptions, "fields">): Record;

  /** The value as a JSON object, parsed on first access (InvalidInput if it is not one, or is a tombstone). */
  get fields(): Fields;
  set fields(f: Fields);
  /**
   * The value of field `path` ("a.b" walks nested objects); throws MissingField
   * if absent or null, InvalidInput if `type` is given and does not match.
   */
  require(path: string, type: "number"): number;
  require(path: string, type: "string"): string;
  require(path: string, type: "boolean"): boolean;
  require(path: string, type: "array"): Json[];
  require(path: string, type: "object"): { [key: string]: Json };
  require(path: string): any;

  /**
   * The payload bytes (the JSON encoding of `fields` if they changed); `null`
   * for a tombstone (a Kafka null value, distinct from empty bytes).
   * Assigning replaces the payload; assigning `null` emits a tombstone.
   */
  get value(): Uint8Array | null;
  set value(v: BytesLike | null);
  /** True if the value is null (a tombstone). */
  readonly isTombstone: boolean;
  /** The payload decoded as UTF-8; null for a tombstone. */
  readonly text: string | null;

  get key(): Uint8Array | null;
  set key(k: BytesLike | null);
  /** The key decoded as UTF-8, or null. */
  readonly keyText: string | null;
  get headers(): Headers;
  set headers(h: ConstructorParameters<typeof Headers>[0]);
  /** Milliseconds since the epoch, or null. */
  get timestamp(): number | null;
  set timestamp(ts: number | bigint | Date | null);

  /** Where the input came from. */
  topic: string;
  partition: number;
  /** A Number (a BigInt only beyond 2^53). */
  offset: number | bigint;

  /** Routes the record to a declared output topic; returns the record. */
  to(topic: string): this;
  /** What `to()` set; null = the pipeline's default output topic. */
  readonly outputTopic: string | null;
  /** An independent copy (fields deep-copied), e.g. for fan-out. */
  copy(): Record;
}

/** What a transform function may return. */
export type TransformResult = Record | null | Record[] | Iterable<Record>;

/** Marks `fn` as the transform function (the module's default export) and returns it unchanged. */
export function transform<F extends (record: Record) => TransformResult>(fn: F): F;

type LogFn = (...args: unknown[]) => void;
/** Logging to the worker's log (host.log); arguments joined by spaces, objects as JSON. */
export const log: {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  warning: LogFn;
  error: LogFn;
  /** Redirects lines to `fn(level, message)` (tests); null resets to stderr. */
  setSink(fn: ((level: "trace" | "debug" | "info" | "warn" | "error", message: string) => void) | null): void;
};

declare const _default: {
  transform: typeof transform;
  Record: typeof Record;
  Headers: typeof Headers;
  InvalidInput: typeof InvalidInput;
  MissingField: typeof MissingField;
  log: typeof log;
};
export default _default;
