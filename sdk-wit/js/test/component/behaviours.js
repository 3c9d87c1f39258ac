// A customer function that exercises every SDK path, driven by the input's
// "op" field. Built and run in the worker's sandbox by
// sdk-wit/js/test/component/run.sh (golden file: behaviours.expected.jsonl).
import { transform, Record, InvalidInput, log } from "pipeline-sdk";

function fail(record) {
  // a helper in the customer file, so error locations name it
  throw new RangeError(`bad amount ${record.fields.amount}`);
}

export default transform(function behaviours(record) {
  const op = record.fields.op;
  switch (op) {
    case "pass": // only read: the original bytes go out untouched
      return [record, Record.fromFields({ raw: record.text, same: record.text === new TextDecoder().decode(record.value) })];
    case "nested": // a nested in-place change is not lost
      record.fields.inner.n += 1;
      return [record, Record.fromFields({ raw: record.text })];
    case "drop":
      return null;
    case "fanout":
      return [record, record.copy().to("audit"), Record.fromFields({ derived: true }, { key: "k2" })];
    case "route":
      return record.to("other");
    case "meta":
      record.fields.meta = {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
        offsetType: typeof record.offset,
        key: record.keyText,
        rawKey: record.key === null ? null : Array.from(record.key),
        headers: record.headers.size,
        timestamp: record.timestamp,
      };
      return record;
    case "value": // a non-JSON payload
      record.value = "plain text é";
      return record;
    case "log":
      log.info("hello from", op, { n: 1 }, [1, 2]);
      log.warn("a warning");
      return record;
    case "clock":
      record.fields.clock = { now: Date.now() > 1.7e12, rnd: Math.random() < 1, perf: typeof performance };
      return record;
    case "undefined":
      return;
    case "throw":
      fail(record);
    case "throw-string":
      throw "just a string";
    case "typeerror":
      return record.fields.nope.deeper;
    case "invalid":
      throw new InvalidInput("customer says no");
    case "require":
      return record.require("context.tier");
    case "require-type":
      record.require("amount", "string");
      return record;
    case "nan":
      record.fields.x = record.fields.nope * 2;
      return record;
    case "bigint":
      record.fields.x = 1n;
      return record;
    case "plain-object":
      return { value: "x" };
    case "same-twice":
      return [record, record];
    case "async":
      return Promise.resolve(record);
    case "bytes-in-fields":
      record.fields.k = new Uint8Array([1]);
      return record;
    case "sdk-instance": // the customer's Record class is the one the runtime checks
      return [new Record("from new Record")];
    default:
      throw new InvalidInput(`unknown op ${JSON.stringify(op)}`);
  }
});
