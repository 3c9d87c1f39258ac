"""A second enrichment function, for the hot-swap benchmark: different code
(so a different component digest) on the same componentize-py runtime as
customer-examples/enrich_event, i.e. what a customer's next upload looks
like. Same outputs shape as enrich_event plus one field."""

from pipeline_sdk import transform, Record


@transform
def enrich_variant(record: Record) -> Record:
    start = record.fields.get("session_start", 0)
    end = record.fields.get("session_end", start)
    minutes = (end - start) / 60.0
    record.fields["session_duration_minutes"] = minutes
    record.fields["engagement_tier"] = "high" if minutes > 30 else "standard"
    record.fields["variant"] = 2
    return record
