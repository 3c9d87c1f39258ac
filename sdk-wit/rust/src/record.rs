use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::TransformError;

/// One Kafka header. Values are raw bytes; a Kafka null header value arrives
/// as an empty vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            key: key.into(),
            value: value.into(),
        }
    }

    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// A record as it was consumed from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (a null value, a delete in a compacted topic),
    /// distinct from an empty value. A function sees tombstones only with the
    /// pipeline's `tombstones = "function"`.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record carries one.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with this value and nothing else (empty topic, partition 0,
    /// offset 0, no key, headers or timestamp). Handy in unit tests; chain the
    /// `with_*` methods for the rest.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            topic: String::new(),
            partition: 0,
            offset: 0,
            timestamp: None,
        }
    }

    /// A tombstone (null value) and nothing else; chain `with_key` (for unit tests).
    pub fn tombstone() -> Self {
        Record {
            value: None,
            ..Record::new(Vec::new())
        }
    }

    /// A record whose value is `value` serialized as JSON (for unit tests).
    pub fn from_json(value: &Value) -> Self {
        Record::new(serde_json::to_vec(value).expect("serde_json::Value always serializes"))
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }

    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The key as UTF-8 text (`None` if there is no key or it is not UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value bytes; `None` for a tombstone (a null value), which is not
    /// the same as `Some(&[])`.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Whether the value is null (a Kafka tombstone).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value bytes, or `invalid-input` naming the tombstone. What the
    /// JSON/text accessors use, so a tombstone is never read as `{}` or "".
    pub fn value_or_invalid(&self) -> Result<&[u8], TransformError> {
        self.value.as_deref().ok_or_else(tombstone_error)
    }

    /// The value as UTF-8 text; `invalid-input` if it is not UTF-8 or is a
    /// tombstone.
    pub fn value_str(&self) -> Result<&str, TransformError> {
        std::str::from_utf8(self.value_or_invalid()?).map_err(|e| {
            TransformError::invalid_input(format!("record value is not valid UTF-8: {e}"))
        })
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The value of the first header with this key.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_slice())
    }

    /// The value of the first header with this key, as UTF-8 text.
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.header(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// Deserializes the value as JSON into `T`.
    ///
    /// Errors are `invalid-input`: "record value is not valid JSON: ..." when
    /// the bytes are not JSON, "record value does not match the expected
    /// shape: missing field `x` ..." when they are JSON of the wrong shape,
    /// and "record value is null (a tombstone) ..." for a tombstone.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, TransformError> {
        serde_json::from_slice(self.value_or_invalid()?).map_err(|e| json_error(&e))
    }

    /// The value parsed as a JSON object, as a mutable-friendly map.
    ///
    /// `invalid-input` if the value is not JSON or is JSON but not an object.
    pub fn fields(&self) -> Result<Map<String, Value>, TransformError> {
        match self.json::<Value>()? {
            Value::Object(map) => Ok(map),
            other => Err(TransformError::invalid_input(format!(
                "record value is JSON but not an object (found {})",
                json_kind(&other)
            ))),
        }
    }
}

pub(crate) fn tombstone_error() -> TransformError {
    TransformError::invalid_input(
        "record value is null (a tombstone), not JSON; check `record.is_tombstone()` first",
    )
}

pub(crate) fn json_error(e: &serde_json::Error) -> TransformError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => TransformError::invalid_input(format!(
            "record value does not match the expected shape: {e}"
        )),
        Category::Syntax | Category::Eof | Category::Io => {
            TransformError::invalid_input(format!("record value is not valid JSON: {e}"))
        }
    }
}

/// "null", "boolean", "number", "string", "array" or "object".
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
