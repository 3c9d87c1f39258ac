//! `functions activate --dry-run`: the last records of a pipeline's input
//! topics through the active version and through the candidate, under the
//! pipeline's limits, compared record by record with the golden file's
//! JSON-path diff. Reads like a replay (no group, no commit, no produce);
//! switches nothing.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::sandbox::RecordError;
use crate::sink::SinkTarget;

use super::{diff, lossy, replay, run_all, LocalTestError, Outcome, Produced, MAX_DIFFS};

/// One version's component.
pub struct Version {
    /// `function@version`, stamped on outputs and shown in the report.
    pub label: String,
    pub bytes: Vec<u8>,
}

pub struct Request<'a> {
    pub config: &'a Config,
    pub config_path: &'a Path,
    pub pipeline: &'a str,
    /// As the control plane reports them.
    pub input_topics: Vec<String>,
    pub active: Version,
    pub candidate: Version,
    /// Per input partition, its last N.
    pub records: u64,
    pub timeout: Duration,
    /// Differing records shown in full.
    pub show: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub compared: usize,
    pub identical: usize,
    pub differing: usize,
    pub errors_active: usize,
    pub errors_candidate: usize,
}

/// What a record's result is, as JSON, so two versions' results diff by
/// path (`$[0].value.total`, `$.error`). Only what the function decides is
/// compared: the worker's own headers (`pw.function.version`, which always
/// differs) are left out.
fn outcome_json(r: &Result<Vec<Produced>, RecordError>) -> Value {
    match r {
        Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
        Ok(outs) => Value::Array(
            outs.iter()
                .map(|o| {
                    let mut v = json!({
                        "topic": o.topic,
                        "key": o.record.key.as_deref().map(lossy),
                        "headers": o.record.headers.iter()
                            .map(|h| json!([h.key, lossy(&h.value)]))
                            .collect::<Vec<_>>(),
                    });
                    match &o.record.value {
                        None => v["tombstone"] = Value::Bool(true),
                        Some(b) => {
                            v["value"] = serde_json::from_slice::<Value>(b)
                                .unwrap_or_else(|_| Value::String(lossy(b)))
                        }
                    }
                    v
                })
                .collect(),
        ),
    }
}

pub fn preview(req: Request<'_>) -> Result<Summary, LocalTestError> {
    let config = req.config;
    let shown = req.config_path.display().to_string();
    let index = config
        .pipelines
        .iter()
        .position(|p| p.name == req.pipeline)
        .ok_or_else(|| LocalTestError::UnknownPipeline {
            config: shown.clone(),
            name: req.pipeline.to_string(),
            available: config
                .pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let p = &config.pipelines[index];
    let opts = crate::app::sandbox_options(config)?;
    let active = super::load(
        p,
        Some(index),
        &format!("active {}", req.active.label),
        Some(&req.active.label),
        &req.active.bytes,
        &opts,
    )?;
    let candidate = super::load(
        p,
        Some(index),
        &format!("candidate {}", req.candidate.label),
        Some(&req.candidate.label),
        &req.candidate.bytes,
        &opts,
    )?;
    super::print_pipeline(p, true);
    let plan = replay::Plan {
        group: super::replay_group(&config.kafka, p),
        kafka: config.kafka.clone(),
        topics: req.input_topics.clone(),
        partitions: Vec::new(),
        start: replay::Start::FromEnd(req.records),
        limit: None,
        timeout: req.timeout,
        isolation: replay::Isolation::ReadCommitted,
    };
    let read = replay::read(&plan)?;
    super::print_ranges(&read.ranges, read.inputs.len());
    let target = SinkTarget {
        pipeline: p.name.clone(),
        output_topics: p.output_topics.clone(),
        dead_letter_topic: p.dead_letter_topic.clone(),
        group: String::new(),
    };
    let a: Vec<Outcome> = run_all(&active, p, &target, &read.inputs, false);
    let c: Vec<Outcome> = run_all(&candidate, p, &target, &read.inputs, false);
    let mut s = Summary {
        compared: a.len(),
        ..Summary::default()
    };
    let mut shown_diffs = Vec::new();
    for ((at, ra), (_, rc)) in a.iter().zip(&c) {
        s.errors_active += usize::from(ra.is_err());
        s.errors_candidate += usize::from(rc.is_err());
        let mut d = Vec::new();
        diff("$", &outcome_json(ra), &outcome_json(rc), &mut d);
        if d.is_empty() {
            s.identical += 1;
        } else {
            s.differing += 1;
            if shown_diffs.len() < req.show {
                shown_diffs.push((at.clone(), d));
            }
        }
    }
    println!(
        "\ncompared {} record(s): {} identical, {} differing; errors: active {} {}, candidate {} {}",
        s.compared,
        s.identical,
        s.differing,
        req.active.label,
        s.errors_active,
        req.candidate.label,
        s.errors_candidate
    );
    if !shown_diffs.is_empty() {
        println!(
            "first {} difference(s) (expected = active {}, got = candidate {}; at most {MAX_DIFFS} paths each):",
            shown_diffs.len(),
            req.active.label,
            req.candidate.label
        );
        for (at, d) in &shown_diffs {
            println!("  {at}:");
            for line in d {
                println!("    {line}");
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::OutputRecord;

    fn produced(value: Option<&[u8]>) -> Produced {
        Produced {
            topic: Some("out".into()),
            record: OutputRecord {
                key: Some(b"k".to_vec()),
                value: value.map(<[u8]>::to_vec),
                headers: vec![],
                topic: None,
                timestamp: None,
            },
            wire_headers: vec![("pw.function.version".into(), b"f@1".to_vec())],
        }
    }

    #[test]
    fn results_diff_by_path_and_ignore_the_version_header() {
        let mut d = Vec::new();
        diff(
            "$",
            &outcome_json(&Ok(vec![produced(Some(br#"{"a":1,"b":2}"#))])),
            &outcome_json(&Ok(vec![produced(Some(br#"{"a":1}"#))])),
            &mut d,
        );
        assert_eq!(d, ["$[0].value.b: missing (expected 2)"]);
        let mut d = Vec::new();
        let same = outcome_json(&Ok(vec![produced(Some(b"x"))]));
        diff("$", &same, &same, &mut d);
        assert!(d.is_empty());
        // A tombstone is not the JSON text `null`.
        let mut d = Vec::new();
        diff(
            "$",
            &outcome_json(&Ok(vec![produced(None)])),
            &outcome_json(&Ok(vec![produced(Some(b"null"))])),
            &mut d,
        );
        assert_eq!(d.len(), 2, "{d:?}");
        let mut d = Vec::new();
        diff(
            "$",
            &outcome_json(&Ok(vec![])),
            &outcome_json(&Err(RecordError::Failed("boom".into()))),
            &mut d,
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("boom"), "{d:?}");
    }
}
