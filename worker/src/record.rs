//! Kafka message → WIT input record, trusting nothing in the message.
//!
//! Anything a producer can put in a record must either reach the function or
//! be dead-lettered with a kind and a message naming what was wrong; nothing
//! may panic the consumer thread. rdkafka 0.39's `Headers::get`, `try_get`
//! and `iter` unwrap `CStr::to_str` on header keys and panic on a key that is
//! not UTF-8, so headers are read here through librdkafka's C API
//! (`rd_kafka_message_headers`, `rd_kafka_header_cnt`,
//! `rd_kafka_header_get_all`) as bytes, and decoded by [`decode`], a pure
//! function of the record's parts that the fuzz target (`fuzz/`) drives.
//!
//! Decisions:
//! - **Header key not UTF-8**: the WIT header key is a `string`, so such a
//!   key cannot reach the function without loss. The record is dead-lettered
//!   with kind `invalid-input`, the message naming the header's index and its
//!   bytes escaped (`header 2 key is not valid UTF-8: b"\xff\xfe"`). The dead
//!   letter keeps the original headers byte for byte ([`RawRecord::headers`]
//!   is librdkafka's own copy, never read as `&str`).
//! - **Header value not UTF-8**: values are bytes in the WIT; passed as is.
//! - **Null header value**: the WIT header value is not optional; it reaches
//!   the function as an empty value.
//! - **Null value** (a tombstone) stays `None`, distinct from an empty value;
//!   what happens to it is the pipeline's `tombstones` setting.
//! - **Null key** stays `None`, an empty key stays `Some([])`.
//! - Sizes and header counts are not limited here: the broker already bounded
//!   the record (`max.message.bytes`), and the consumer's fetch settings admit
//!   anything it accepted (see [`crate::kafka::consumer_config`]).

use std::ffi::CStr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};

use crate::sandbox::{Header, InputRecord, RecordError};

/// One header as librdkafka holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// The parts of a consumed Kafka record, borrowed from the message.
#[derive(Debug, Clone)]
pub struct KafkaParts<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<RawHeader<'a>>,
}

/// Why a record cannot be handed to a function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header {index} key is not valid UTF-8: b\"{escaped}\"")]
    HeaderKeyNotUtf8 { index: usize, escaped: String },
    #[error("header {index} cannot be read: {reason}")]
    HeaderUnreadable { index: usize, reason: String },
}

impl From<DecodeError> for RecordError {
    fn from(e: DecodeError) -> Self {
        RecordError::InvalidInput(e.to_string())
    }
}

/// Kafka parts → the function's input record.
pub fn decode(parts: &KafkaParts<'_>) -> Result<InputRecord, DecodeError> {
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (index, h) in parts.headers.iter().enumerate() {
        let key = std::str::from_utf8(h.key).map_err(|_| DecodeError::HeaderKeyNotUtf8 {
            index,
            escaped: h.key.escape_ascii().to_string(),
        })?;
        headers.push(Header {
            key: key.to_string(),
            value: h.value.map(<[u8]>::to_vec).unwrap_or_default(),
        });
    }
    Ok(InputRecord {
        key: parts.key.map(<[u8]>::to_vec),
        value: parts.value.map(<[u8]>::to_vec),
        headers,
        topic: parts.topic.to_string(),
        partition: parts.partition,
        offset: parts.offset,
        timestamp: parts.timestamp,
    })
}

/// The headers of a native headers list, keys as bytes.
///
/// # Safety
/// `hdrs` must be null or a valid `rd_kafka_headers_t` that outlives `'a`
/// and is not modified during `'a`.
pub unsafe fn read_native_headers<'a>(
    hdrs: *const rdsys::rd_kafka_headers_t,
) -> Result<Vec<RawHeader<'a>>, DecodeError> {
    if hdrs.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: `hdrs` is valid per the caller.
    let count = unsafe { rdsys::rd_kafka_header_cnt(hdrs) };
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: out-pointers are valid locals; librdkafka writes borrowed
        // pointers into the headers list, which lives for 'a.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(hdrs, index, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return Err(DecodeError::HeaderUnreadable {
                index,
                reason: format!("librdkafka error {err:?}"),
            });
        }
        // SAFETY: librdkafka's header names are NUL-terminated copies.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = if value.is_null() {
            None
        } else if size == 0 {
            Some(&[][..])
        } else {
            // SAFETY: librdkafka returns `size` readable bytes at `value`.
            Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
        };
        out.push(RawHeader { key, value });
    }
    Ok(out)
}

/// A consumed message's parts, headers read without `to_str`.
pub fn message_parts<'a>(msg: &'a BorrowedMessage<'_>) -> Result<KafkaParts<'a>, DecodeError> {
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `msg.ptr()` is the live message; the headers list it returns
    // belongs to the message and lives as long as `msg`.
    let err = unsafe { rdsys::rd_kafka_message_headers(msg.ptr(), &mut hdrs) };
    let headers = match err {
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
            // SAFETY: as above.
            unsafe { read_native_headers(hdrs)? }
        }
        // No headers at all.
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__NOENT => Vec::new(),
        e => {
            return Err(DecodeError::HeaderUnreadable {
                index: 0,
                reason: format!("librdkafka error {e:?}"),
            })
        }
    };
    Ok(KafkaParts {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
        key: msg.key(),
        value: msg.payload(),
        headers,
    })
}

/// A record exactly as consumed, for a dead letter that loses nothing.
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// librdkafka's copy of the headers (`rd_kafka_headers_copy`): add the
    /// `pw.*` headers with `insert`; never read keys through rdkafka's
    /// `Headers` trait, which panics on a key that is not UTF-8.
    pub headers: Option<OwnedHeaders>,
}

/// A record that cannot reach the function.
pub struct Poison {
    pub raw: RawRecord,
    /// The same record with header keys escaped (lossy), for logs and
    /// anything that needs an [`InputRecord`].
    pub lossy: InputRecord,
    pub error: RecordError,
}

/// A consumed message → the function's input, or the poison to dead-letter.
pub fn from_message(msg: &BorrowedMessage<'_>) -> Result<InputRecord, Box<Poison>> {
    let error = match message_parts(msg).and_then(|p| decode(&p)) {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    let parts = message_parts(msg).ok();
    let lossy = InputRecord {
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers: parts
            .map(|p| {
                p.headers
                    .iter()
                    .map(|h| Header {
                        key: String::from_utf8_lossy(h.key).into_owned(),
                        value: h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
    };
    Err(Box::new(Poison {
        raw: RawRecord {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            // `headers()` and `detach()` copy natively and never read keys.
            headers: msg.headers().map(|h| h.detach()),
        },
        lossy,
        error: error.into(),
    }))
}

/// Headers as owned bytes: key, value (`None` = null).
pub type HeaderBytes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The headers of a list the producer will send, keys as bytes, read the
/// way a consumer's are (C strings): what the broker will store. The encode
/// fuzz target checks outputs against it.
pub fn owned_header_bytes(headers: &OwnedHeaders) -> Result<HeaderBytes, DecodeError> {
    let borrowed: &rdkafka::message::BorrowedHeaders = headers.as_borrowed();
    // SAFETY: `BorrowedHeaders` is librdkafka's list itself (rdkafka casts
    // the reference to the native pointer the same way), alive and unchanged
    // while `headers` is borrowed, which outlives this call.
    let raw = unsafe {
        read_native_headers(
            (borrowed as *const rdkafka::message::BorrowedHeaders)
                .cast::<rdsys::rd_kafka_headers_t>(),
        )
    }?;
    Ok(header_bytes(&raw))
}

/// Borrowed headers as owned bytes.
pub fn header_bytes(headers: &[RawHeader<'_>]) -> HeaderBytes {
    headers
        .iter()
        .map(|h| (h.key.to_vec(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

/// Builds a native headers list from raw bytes and reads it back through
/// [`read_native_headers`]: the fuzz target's and the tests' way to exercise
/// the unsafe path with keys no rdkafka API lets one construct.
#[doc(hidden)]
pub fn native_roundtrip(
    headers: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<HeaderBytes, DecodeError> {
    // SAFETY: a fresh list, destroyed below; every pointer passed to
    // `rd_kafka_header_add` is valid for the length given, and librdkafka
    // copies names and values.
    unsafe {
        let list = rdsys::rd_kafka_headers_new(headers.len());
        for (k, v) in headers {
            let (vp, vl) = match v {
                Some(v) => (v.as_ptr().cast(), v.len() as isize),
                None => (std::ptr::null(), 0),
            };
            rdsys::rd_kafka_header_add(list, k.as_ptr().cast(), k.len() as isize, vp, vl);
        }
        let out = read_native_headers(list).map(|hs| header_bytes(&hs));
        rdsys::rd_kafka_headers_destroy(list);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(headers: Vec<RawHeader<'a>>, value: Option<&'a [u8]>) -> KafkaParts<'a> {
        KafkaParts {
            topic: "t",
            partition: 1,
            offset: 7,
            timestamp: Some(5),
            key: None,
            value,
            headers,
        }
    }

    #[test]
    fn non_utf8_header_key_names_index_and_bytes() {
        let hs = vec![
            RawHeader {
                key: b"ok",
                value: Some(b"\xff"),
            },
            RawHeader {
                key: b"\xff\xfe",
                value: None,
            },
        ];
        let err = decode(&parts(hs, Some(b"v"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"header 1 key is not valid UTF-8: b"\xff\xfe""#
        );
        assert_eq!(RecordError::from(err).kind(), "invalid-input");
    }

    #[test]
    fn null_and_empty_stay_distinct() {
        let r = decode(&parts(vec![], None)).unwrap();
        assert_eq!(r.value, None);
        let r = decode(&parts(
            vec![RawHeader {
                key: b"h",
                value: None,
            }],
            Some(b""),
        ))
        .unwrap();
        assert_eq!(r.value, Some(vec![]));
        assert_eq!(r.headers[0].value, Vec::<u8>::new());
        assert_eq!((r.partition, r.offset, r.timestamp), (1, 7, Some(5)));
    }

    #[test]
    fn native_headers_keep_bytes_and_null_values() {
        let hs = vec![
            (b"\xff\xfe".to_vec(), Some(b"v".to_vec())),
            (b"a".to_vec(), None),
            (b"b".to_vec(), Some(vec![])),
        ];
        let back = native_roundtrip(&hs).unwrap();
        assert_eq!(back, hs);
    }
}
