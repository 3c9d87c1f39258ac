//! Integration tests: one binary, one module per topic (as wasmtime's
//! `tests/all`). Everything that touches Kafka runs against the real broker
//! that `scripts/kafka.sh start` runs on 127.0.0.1:9092 (`KAFKA_BOOTSTRAP`
//! overrides); components come from `make examples`.

mod support;

mod cache;
mod chaos;
mod columnar;
mod columnar_init;
mod config_errors;
mod control_limits;
mod crash;
mod dead_letter;
mod dev_mode;
mod exactly_once;
mod examples;
mod group;
mod guest_errors;
mod hostile;
mod localtest;
mod metrics_otlp;
mod pipeline_e2e;
mod poison;
mod produce_errors;
mod quotas;
mod readiness;
mod redrive;
mod registry;
mod replay;
mod sandbox_reuse;
mod sdk_packages;
mod telemetry;
mod tenant_output;
