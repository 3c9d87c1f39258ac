// Types of pipeline-sdk-columnar.js, the module "pipeline-sdk/columnar":
// columnar (Apache Arrow) functions, world transform-columnar.
// TypeScript customers in a checkout map it in tsconfig.json next to
// "pipeline-sdk" (`pipeline-worker init --lang ts --columnar` does):
//   "paths": { "pipeline-sdk/columnar": ["<repo>/sdk-wit/js/pipeline-sdk-columnar.d.ts"] }
// See sdk-wit/js/README.md.
import type { DataType, RecordBatch, Table, Vector } from "apache-arrow";

export { InvalidInput, log } from "./pipeline-sdk.js";

/** "_row": the input row an output row comes from (uint32 or int32, non-null). */
export const ROW: "_row";
/** "_topic": routes a row to a declared output topic (utf8; null = the first). */
export const TOPIC: "_topic";
/** "_error": a non-null value dead-letters the row's input record (utf8). */
export const ERROR: "_error";

/** What a columnar function returns: the output rows plus the mapping columns. */
export type ColumnarResult = Table | RecordBatch;

/**
 * Marks `fn` as the columnar function (the module's default export) and
 * returns it unchanged. It gets the batch as a Table of the pipeline's
 * schema, one row per input record, in input order.
 */
export function columnar<F extends (table: Table) => ColumnarResult>(fn: F): F;

/** Column values: a Vector, a typed array, or an array (with `type`, or inferred by apache-arrow). */
export type ColumnValues = Vector | ArrayLike<unknown> | Iterable<unknown>;

/** `table` with one more column `name`, appended last (same length as the table). */
export function withColumn(table: ColumnarResult, name: string, values: ColumnValues, type?: DataType): Table;
/** A 1:1 output: `_row` = 0..n-1. */
export function withRowIndex(table: ColumnarResult): Table;
/** `table` with `_row` = `rows` (output row j comes from input row rows[j]). */
export function withRows(table: ColumnarResult, rows: Iterable<number> | ArrayLike<number>): Table;
/** The input rows at `rows`, in that order (repeat = fan-out, left out = dropped), with `_row`. */
export function takeRows(table: ColumnarResult, rows: Iterable<number> | ArrayLike<number>): Table;
/** The input rows where `keep` is true (one value per row, or a function of the row number), with `_row`. */
export function filterRows(
  table: ColumnarResult,
  keep: ArrayLike<boolean | number | null | undefined> | Vector | ((row: number) => boolean),
): Table;
/** `table` with `_topic`: one topic (or null: the first output topic) per row. */
export function withTopics(table: ColumnarResult, topics: Iterable<string | null | undefined>): Table;
/** `table` with `_error`: one message (or an Error, or null: no error) per row. */
export function withErrors(table: ColumnarResult, errors: Iterable<string | Error | null | undefined>): Table;

/** Thrown by `call` when the function (or the SDK's checks) refuses the batch. */
export class BatchRefused extends Error {
  readonly kind: "invalid-input" | "failed";
  /** The message the worker would put in the dead letters. */
  readonly reason: string;
}

/**
 * Calls `fn` on `input` the way the worker does (Arrow IPC both ways), for
 * unit tests on Node; returns the output Table, or throws BatchRefused.
 */
export function call(fn: (table: Table) => ColumnarResult, input: ColumnarResult, opts?: { file?: string }): Table;
