from pipeline_sdk import transform, Record

@transform
def enrich_event(record: Record) -> Record:
    """Add computed fields to each event record."""
    record.fields["session_duration_minutes"] = (
        record.fields["session_end"] - record.fields["session_start"]
    ) / 60.0
    if record.fields["session_duration_minutes"] > 30:
        record.fields["engagement_tier"] = "high"
    else:
        record.fields["engagement_tier"] = "standard"
    return record
