//! pipeline-worker: Kafka → sandboxed WebAssembly component → Kafka.
//!
//! The modules follow the data flow: [`source`] consumes and tracks offsets,
//! [`sandbox`] runs the customer's function, [`sink`] produces outputs and
//! dead letters; [`pipeline`] wires them per configured pipeline, [`config`]
//! reads the TOML.

pub mod app;
pub mod config;
pub mod dev;
pub mod localtest;
pub mod pipeline;
pub mod registry;
pub mod sandbox;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod telemetry;
