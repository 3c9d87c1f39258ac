// Price calculator, columnar, in JavaScript: customer-examples/price_columnar
// (Rust, arrow-arith kernels) ported to the JS SDK's "pipeline-sdk/columnar"
// with apache-arrow. apache-arrow has no compute kernels, so the arithmetic is
// one loop over the columns' typed arrays; same schema (pipeline.toml), same
// outputs and the same per-row errors as the Rust example.
import { Float64 } from "apache-arrow";
import { columnar, InvalidInput, withColumn, withErrors, withRowIndex } from "pipeline-sdk/columnar";

const RATES = new Map([
  ["premium", 0.15],
  ["standard", 0.05],
  ["new", 0.1],
]);

// Whole cents, half away from zero (prices are never negative here).
const cents = (amount) => Math.round(amount * 100) / 100;

function column(table, name) {
  const c = table.getChild(name);
  if (c === null) throw new InvalidInput(`the batch has no column \`${name}\` (declare it in the pipeline's schema)`);
  return c;
}

export default columnar(function price(table) {
  const n = table.numRows;
  const base = column(table, "base_price").toArray(); // Float64Array (non-nullable)
  const quantity = column(table, "quantity").toArray(); // BigInt64Array (int64, non-nullable)
  const context = column(table, "context");
  const tier = context.getChild("customer_tier");
  if (tier === null) throw new InvalidInput("column `context` has no field `customer_tier`");

  const rate = new Array(n).fill(null);
  const unit = new Array(n).fill(null);
  const total = new Array(n).fill(null);
  const errors = new Array(n).fill(null);
  for (let i = 0; i < n; i++) {
    const t = context.isValid(i) ? tier.get(i) : null;
    const r = t === null ? undefined : RATES.get(t.toLowerCase());
    const b = base[i];
    const q = quantity[i];
    if (!Number.isFinite(b) || b < 0) errors[i] = `field \`base_price\` must be a non-negative number, got ${b}`;
    else if (q < 0n) errors[i] = `field \`quantity\` must not be negative, got ${q}`;
    else if (t === null) errors[i] = "missing field `context.customer_tier`";
    else if (r === undefined) errors[i] = `unknown customer_tier \`${t}\` (expected premium, standard or new)`;
    if (r === undefined) continue; // no rate: no prices (null), as in the Rust kernels
    rate[i] = r;
    unit[i] = cents(b * (1 - r));
    total[i] = cents(unit[i] * Number(q));
  }
  let out = withColumn(table, "discount_rate", rate, new Float64());
  out = withColumn(out, "unit_price", unit, new Float64());
  out = withColumn(out, "total_price", total, new Float64());
  return withErrors(withRowIndex(out), errors);
});
