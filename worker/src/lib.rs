//! pipeline-worker: Kafka → sandboxed WebAssembly component → Kafka.
//!
//! The modules follow the data flow: [`source`] consumes and tracks offsets,
//! [`sandbox`] runs the customer's function, [`sink`] produces outputs and
//! dead letters; [`pipeline`] wires them per configured pipeline, [`config`]
//! reads the TOML. [`record`] turns Kafka messages into input records,
//! [`kafka`] holds the client settings and [`stats`] the counters every layer
//! writes and [`telemetry`] reads.

pub mod app;
pub mod budget;
pub mod config;
pub mod dev;
pub mod dlq;
pub mod kafka;
pub mod localtest;
pub mod pipeline;
pub mod quota;
pub mod record;
pub mod registry;
pub mod sandbox;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod stats;
pub mod telemetry;
pub mod txn;
