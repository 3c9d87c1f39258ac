import { transform } from "pipeline-sdk";

// Adds computed fields to each event: session_duration_minutes (from epoch
// seconds) and engagement_tier ("high" above 30 minutes, else "standard").
// A tombstone (null value; seen only with the pipeline's
// tombstones = "function") is passed on unchanged, keyed.
export default transform((record) => {
  if (record.value === null) return record;
  const start = record.require("session_start", "number");
  const end = record.require("session_end", "number");
  record.fields.session_duration_minutes = (end - start) / 60;
  record.fields.engagement_tier = record.fields.session_duration_minutes > 30 ? "high" : "standard";
  return record;
});
