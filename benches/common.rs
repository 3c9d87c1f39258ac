//! What the end-to-end benches share (`#[path = "common.rs"] mod common;`):
//! the broker, topics of PARTITIONS partitions, the enrich records and a
//! paced producer stamping each record's send time, so that `e2e` and `eos`
//! measure the same workload the same way.

// Each bench uses part of it; the rest would warn in the other.
#![allow(dead_code)]

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

pub const PARTITIONS: i32 = 4;

pub fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `name` parsed (underscores allowed as digit separators), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn now_millis() -> i64 {
    (now_nanos() / 1_000_000) as i64
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

/// Creates topics of PARTITIONS partitions; with `log_append_time` they get
/// broker timestamps (`LogAppendTime`), which e2e's throughput is taken from.
pub fn create(topics: &[&str], log_append_time: bool) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let t = NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1));
            if log_append_time {
                t.set("message.timestamp.type", "LogAppendTime")
            } else {
                t
            }
        })
        .collect();
    for r in rt()
        .block_on(admin().create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Deletes topics unless BENCH_KEEP=1. Callers delete at the end of a round,
/// not between candidates (deleting large topics keeps the broker's disk
/// busy).
pub fn delete(topics: &[String]) {
    if std::env::var("BENCH_KEEP").as_deref() == Ok("1") || topics.is_empty() {
        return;
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = rt().block_on(admin().delete_topics(&names, &AdminOptions::new()));
}

/// Record `i`: what customer-examples/enrich_event expects.
pub fn value(i: usize) -> String {
    format!(
        r#"{{"id":{i},"user":"u{}","event_type":"click","session_start":1700000000,"session_end":{},"page":"/products/{}"}}"#,
        i % 1000,
        1700000000 + (i % 120) * 60,
        i % 50
    )
}

/// The price inputs of record `i`: (base price in cents, quantity, customer
/// tier, currency). Tiers vary in case, as price_calculator's sample does.
pub fn price_fields(i: usize) -> (u64, i64, &'static str, &'static str) {
    (
        100 + (i as u64 * 37) % 100_000,
        (i % 7) as i64,
        ["premium", "standard", "new", "Premium"][i % 4],
        ["EUR", "USD", "GBP"][i % 3],
    )
}

/// Record `i` for the price candidates: the shape of both
/// customer-examples/price_calculator and price_columnar's samples, with only
/// fields price_columnar's schema declares, so both functions see the same
/// record and output the same fields.
pub fn price_value(i: usize) -> String {
    let (cents, quantity, tier, currency) = price_fields(i);
    format!(
        r#"{{"item_id":"sku-{i}","base_price":{}.{:02},"quantity":{quantity},"context":{{"customer_tier":"{tier}","currency":"{currency}"}}}}"#,
        cents / 100,
        cents % 100
    )
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces enrich records `ids` (see [`produce_values`]).
pub fn produce(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    ids: Range<usize>,
    rate: Option<u64>,
    header: &str,
) {
    produce_values(p, topic, ids, rate, header, value)
}

/// Produces records `ids` with values `value(i)`; with `rate`, paced
/// (records/s). Each carries its send time in a header: `sent-ns`, or another
/// name for records that are not measured (same size).
pub fn produce_values(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    ids: Range<usize>,
    rate: Option<u64>,
    header: &str,
    value: fn(usize) -> String,
) {
    let start = Instant::now();
    let first = ids.start;
    for i in ids {
        if let Some(r) = rate {
            let due = Duration::from_nanos((i - first) as u64 * 1_000_000_000 / r);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let value = value(i);
        let sent = now_nanos().to_string();
        let key = format!("u{}", i % 1000);
        let rec =
            BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: header,
                    value: Some(&sent),
                }));
        send_retrying(p, rec);
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// Sends, retrying while the producer's queue is full (the benches produce
/// faster than one flush).
pub fn send_retrying<K, V>(
    p: &ThreadedProducer<DefaultProducerContext>,
    mut rec: BaseRecord<'_, K, V>,
) where
    K: rdkafka::message::ToBytes + ?Sized,
    V: rdkafka::message::ToBytes + ?Sized,
{
    while let Err((_, back)) = p.send(rec) {
        rec = back;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The median; NaN for no values (a candidate that failed every round).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}
