//! Records across the `pipeline:transform` 0.1 boundary. The host speaks
//! 0.2 (nullable values); a 0.1 component sees a null value as an empty one
//! (`tombstones = "function"` is refused for it at pipeline start, so this
//! only happens for values that really are empty), and every value it
//! returns is a present one.

use super::bindings_v01::pipeline::transform::types as v01;
use super::{Header, InputRecord, OutputRecord, TransformError};

fn header_to_v01(h: &Header) -> v01::Header {
    v01::Header {
        key: h.key.clone(),
        value: h.value.clone(),
    }
}

fn header_from_v01(h: v01::Header) -> Header {
    Header {
        key: h.key,
        value: h.value,
    }
}

pub fn input_to_v01(i: &InputRecord) -> v01::InputRecord {
    v01::InputRecord {
        key: i.key.clone(),
        value: i.value.clone().unwrap_or_default(),
        headers: i.headers.iter().map(header_to_v01).collect(),
        topic: i.topic.clone(),
        partition: i.partition,
        offset: i.offset,
        timestamp: i.timestamp,
    }
}

fn output_from_v01(o: v01::OutputRecord) -> OutputRecord {
    OutputRecord {
        key: o.key,
        value: Some(o.value),
        headers: o.headers.into_iter().map(header_from_v01).collect(),
        topic: o.topic,
        timestamp: o.timestamp,
    }
}

pub fn result_from_v01(
    r: Result<Vec<v01::OutputRecord>, v01::TransformError>,
) -> Result<Vec<OutputRecord>, TransformError> {
    match r {
        Ok(outs) => Ok(outs.into_iter().map(output_from_v01).collect()),
        Err(v01::TransformError::InvalidInput(m)) => Err(TransformError::InvalidInput(m)),
        Err(v01::TransformError::Failed(m)) => Err(TransformError::Failed(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_becomes_empty_and_outputs_become_present() {
        let input = InputRecord {
            key: None,
            value: None,
            headers: vec![Header {
                key: "h".into(),
                value: b"v".to_vec(),
            }],
            topic: "t".into(),
            partition: 3,
            offset: 9,
            timestamp: Some(5),
        };
        let old = input_to_v01(&input);
        assert!(old.value.is_empty());
        assert_eq!(
            (old.partition, old.offset, old.headers[0].key.as_str()),
            (3, 9, "h")
        );
        let out = result_from_v01(Ok(vec![v01::OutputRecord {
            key: Some(b"k".to_vec()),
            value: Vec::new(),
            headers: vec![],
            topic: Some("side".into()),
            timestamp: None,
        }]))
        .unwrap();
        assert_eq!(out[0].value.as_deref(), Some(&b""[..]));
        assert_eq!(out[0].topic.as_deref(), Some("side"));
        assert!(matches!(
            result_from_v01(Err(v01::TransformError::Failed("x".into()))),
            Err(TransformError::Failed(m)) if m == "x"
        ));
    }
}
