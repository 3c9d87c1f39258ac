//! `v01-echo`: a component of the old world, `pipeline:transform@0.1.0`
//! (`transform`, no batch export), built with wit-bindgen directly so it
//! keeps targeting 0.1 whatever the SDK moves to. It echoes each record with
//! its value unchanged, plus a header `v01-value-len` giving the length of
//! the (non-nullable) value it received, so the worker's tests can see what
//! crossed the 0.1 boundary.

wit_bindgen::generate!({
    path: "../../../sdk-wit/wit-0.1",
    world: "transform",
});

use exports::pipeline::transform::transformer::Guest;
use pipeline::transform::types::{Header, InputRecord, OutputRecord, TransformError};

struct Echo;

impl Guest for Echo {
    fn transform(input: InputRecord) -> Result<Vec<OutputRecord>, TransformError> {
        if input.value == b"fail" {
            return Err(TransformError::Failed("v01-echo: asked to fail".into()));
        }
        let mut headers = input.headers;
        headers.push(Header {
            key: "v01-value-len".into(),
            value: input.value.len().to_string().into_bytes(),
        });
        Ok(vec![OutputRecord {
            key: input.key,
            value: input.value,
            headers,
            topic: None,
            timestamp: input.timestamp,
        }])
    }
}

export!(Echo);
