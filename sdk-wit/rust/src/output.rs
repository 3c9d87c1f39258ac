use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::record::{json_error, tombstone_error};
use crate::{Header, Record, TransformError};

/// A record the function wants produced.
///
/// Build one from the input record so its key, headers and timestamp pass
/// through unchanged, then override what you need:
///
/// ```
/// # use pipeline_sdk::{Output, Record};
/// # let record = Record::new(&b"{}"[..]).with_key("k");
/// let out = Output::from(&record)          // or Output::from(record) to move
///     .with_json(&serde_json::json!({"ok": true}))
///     .with_header("x-source", "price-calculator")
///     .to("prices");                        // route; default = first output topic
/// assert_eq!(out.key(), Some(&b"k"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub(crate) key: Option<Vec<u8>>,
    /// `None` produces a tombstone.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<Header>,
    pub(crate) topic: Option<String>,
    pub(crate) timestamp: Option<i64>,
    /// A `with_json` that could not serialize; reported as `failed` when the
    /// output is handed back to the worker.
    pub(crate) error: Option<String>,
}

impl Output {
    /// An output with this value, no key, no headers, no timestamp, to the
    /// pipeline's default output topic.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Output {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            topic: None,
            timestamp: None,
            error: None,
        }
    }

    /// A tombstone (null value) for `key`, e.g. to delete the key in a
    /// compacted output topic. No headers, no timestamp, default topic.
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        Output::new(Vec::new()).with_key(key).without_value()
    }

    /// An output whose value is `value` serialized as JSON (no key/headers/timestamp).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        Output::new(Vec::new()).with_json(value)
    }

    /// Routes the output to one of the pipeline's declared output topics.
    /// Without it the output goes to the first (default) output topic. An
    /// undeclared topic sends the input record to the dead-letter topic.
    pub fn to(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sends the output to the default output topic (undoes [`Output::to`]).
    pub fn to_default_topic(mut self) -> Self {
        self.topic = None;
        self
    }

    /// Replaces the value with raw bytes.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Makes the output a tombstone (null value), keeping key, headers and
    /// timestamp: `Output::from(&record).without_value()` deletes the
    /// record's key downstream.
    pub fn without_value(mut self) -> Self {
        self.value = None;
        self
    }

    /// Replaces the value with `value` serialized as JSON. If serialization
    /// fails (e.g. a map with non-string keys), the transform returns
    /// `failed("could not serialize output value as JSON: ...")`.
    pub fn with_json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.value = Some(bytes),
            Err(e) => self.error = Some(format!("could not serialize output value as JSON: {e}")),
        }
        self
    }

    /// Replaces the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Produces the output with a null key.
    pub fn without_key(mut self) -> Self {
        self.key = None;
        self
    }

    /// Appends a header (Kafka allows several headers with the same key).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }

    /// Removes every header with this key, then appends `key: value`.
    pub fn set_header(self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let key = key.into();
        self.without_header(&key).with_header(key, value)
    }

    /// Removes every header with this key.
    pub fn without_header(mut self, key: &str) -> Self {
        self.headers.retain(|h| h.key != key);
        self
    }

    /// Removes all headers.
    pub fn without_headers(mut self) -> Self {
        self.headers.clear();
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// Lets the producer assign the timestamp.
    pub fn without_timestamp(mut self) -> Self {
        self.timestamp = None;
        self
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value bytes. Empty for a tombstone as well as for an empty value;
    /// tell them apart with [`Output::is_tombstone`] or [`Output::value_opt`].
    /// (Kept as `&[u8]` from 0.1 so existing test assertions still compile.)
    pub fn value(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }

    /// The value, `None` for a tombstone.
    pub fn value_opt(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Whether this output is a tombstone (null value).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// `None` means the default output topic.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The value parsed as JSON (mostly for tests).
    pub fn value_json<T: DeserializeOwned>(&self) -> Result<T, TransformError> {
        let bytes = self.value.as_deref().ok_or_else(tombstone_error)?;
        serde_json::from_slice(bytes).map_err(|e| json_error(&e))
    }

    /// The deferred `with_json` error, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// Starts from the input record: same key, value, headers and timestamp,
/// default output topic. Moves the record (no copy).
impl From<Record> for Output {
    fn from(r: Record) -> Self {
        Output {
            key: r.key,
            value: r.value,
            headers: r.headers,
            topic: None,
            timestamp: r.timestamp,
            error: None,
        }
    }
}

/// Like `From<Record>` but copies the record's key, value and headers.
impl From<&Record> for Output {
    fn from(r: &Record) -> Self {
        Output {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            topic: None,
            timestamp: r.timestamp,
            error: None,
        }
    }
}

impl Record {
    /// `Output::from(&record)` without copying the value: same key, headers
    /// and timestamp, and an empty (not null) value to be replaced with
    /// [`Output::with_json`] or [`Output::with_value`] (or
    /// [`Output::without_value`] for a tombstone).
    pub fn output(&self) -> Output {
        Output {
            key: self.key.clone(),
            value: Some(Vec::new()),
            headers: self.headers.clone(),
            topic: None,
            timestamp: self.timestamp,
            error: None,
        }
    }
}
