//! Rust guest SDK for pipeline-worker.
//!
//! A customer writes one plain function from a [`Record`] to outputs and
//! exports it with [`export_transform!`]; the SDK does the WIT plumbing.
//! The resulting component targets the world
//! `pipeline:transform/transform-batch@0.2.0`: it exports both
//! `pipeline:transform/transformer` (one record per call) and
//! `pipeline:transform/batch-transformer` (a loop over the same function),
//! and imports `pipeline:transform/host` (for [`log`]).
//!
//! ```ignore
//! use pipeline_sdk::{FieldsExt, Output, Record, TransformError};
//!
//! fn enrich(record: Record) -> Result<Vec<Output>, TransformError> {
//!     let mut fields = record.fields()?;                 // invalid-input if not a JSON object
//!     let total = fields.require_f64("amount")? * 1.2;   // invalid-input "missing field `amount`"
//!     fields.insert("total".into(), total.into());
//!     pipeline_sdk::log::debug!("total={total}");
//!     Ok(vec![Output::from(record).with_json(&fields)]) // keeps key, headers, timestamp
//! }
//!
//! pipeline_sdk::export_transform!(enrich);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: rustc then
//! produces a component directly. The crate must be a `cdylib`.
//!
//! Returning zero outputs filters the record out; one transforms it; several
//! fan it out. A panic traps the component instance (the worker treats it as a
//! failure of the record); the panic message and location are sent through
//! `host.log` at error level first, and the worker puts them in the record's
//! dead letter (`pw.error.message`).

#[cfg(feature = "columnar")]
pub mod columnar;
mod error;
mod fields;
pub mod log;
mod output;
mod record;

pub use error::TransformError;
pub use fields::FieldsExt;
pub use output::Output;
pub use record::{json_kind, Header, Record};

/// Re-exported so customer crates can use the same `serde_json` version.
pub use serde_json;
pub use serde_json::{json, Map, Value};

/// What a transform returns: zero outputs filter the record out, one
/// transforms it, several fan it out.
pub type TransformResult = Result<Vec<Output>, TransformError>;

/// Return types accepted from a function passed to [`export_transform!`]:
/// `Result<Vec<Output>, E>`, `Result<Option<Output>, E>` and
/// `Result<Output, E>` for any `E: Into<TransformError>`.
pub trait IntoTransformResult {
    fn into_transform_result(self) -> TransformResult;
}

impl<E: Into<TransformError>> IntoTransformResult for Result<Vec<Output>, E> {
    fn into_transform_result(self) -> TransformResult {
        self.map_err(Into::into)
    }
}

impl<E: Into<TransformError>> IntoTransformResult for Result<Option<Output>, E> {
    fn into_transform_result(self) -> TransformResult {
        self.map(|o| o.into_iter().collect()).map_err(Into::into)
    }
}

impl<E: Into<TransformError>> IntoTransformResult for Result<Output, E> {
    fn into_transform_result(self) -> TransformResult {
        self.map(|o| vec![o]).map_err(Into::into)
    }
}

/// Raw wit-bindgen bindings for `pipeline:transform/transform-batch@0.2.0`.
/// Not needed for ordinary use.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform-batch",
        // The crate carries its own copy (checked against sdk-wit/wit by the
        // worker's tests), so a git or path dependency needs nothing else.
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_transform_batch_raw",
        default_bindings_module: "pipeline_sdk::bindings",
        runtime_path: "pipeline_sdk::__private::wit_bindgen::rt",
    });
}

// So that `pipeline_sdk::...` paths in the generated bindings resolve inside this crate too.
extern crate self as pipeline_sdk;

/// Implementation details used by [`export_transform!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::pipeline::transform::batch_transformer::Guest as BatchTransformerGuest;
    pub use crate::bindings::exports::pipeline::transform::transformer::Guest as TransformerGuest;
    pub use crate::bindings::pipeline::transform::types::{
        Header as RawHeader, InputRecord, OutputRecord, TransformError as RawTransformError,
        TransformResult as RawTransformResult,
    };
    pub use std::vec::Vec;
    pub use wit_bindgen;

    use crate::{Header, IntoTransformResult, Output, Record, TransformError};

    pub fn record_from_raw(r: InputRecord) -> Record {
        Record {
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|h| Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
        }
    }

    fn output_to_raw(o: Output) -> Result<OutputRecord, String> {
        if let Some(e) = o.error {
            return Err(e);
        }
        Ok(OutputRecord {
            key: o.key,
            value: o.value,
            headers: o
                .headers
                .into_iter()
                .map(|h| RawHeader {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
            topic: o.topic,
            timestamp: o.timestamp,
        })
    }

    pub fn result_to_raw(result: Result<Vec<Output>, TransformError>) -> RawTransformResult {
        match result {
            Ok(outputs) => outputs
                .into_iter()
                .map(output_to_raw)
                .collect::<Result<Vec<_>, String>>()
                .map_err(RawTransformError::Failed),
            Err(TransformError::InvalidInput(m)) => Err(RawTransformError::InvalidInput(m)),
            Err(TransformError::Failed(m)) => Err(RawTransformError::Failed(m)),
        }
    }

    /// Longest panic report sent to the host: a `log` call past the host's
    /// per-call byte budget would be refused as an over-large output, and
    /// the panic reported as that instead of itself.
    pub const MAX_PANIC_REPORT: usize = 8 * 1024;

    /// `panicked at src/lib.rs:17:17: index out of bounds: ...`, on one
    /// line first (the worker's dead letter keeps the start of what the
    /// guest reported), at most [`MAX_PANIC_REPORT`] bytes.
    pub fn panic_report(location: Option<&std::panic::Location<'_>>, payload: &str) -> String {
        let mut s = match location {
            Some(l) => format!(
                "panicked at {}:{}:{}: {payload}",
                l.file(),
                l.line(),
                l.column()
            ),
            None => format!("panicked: {payload}"),
        };
        if s.len() > MAX_PANIC_REPORT {
            let mut end = MAX_PANIC_REPORT - '…'.len_utf8();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        s
    }

    /// The hook's report for `info`.
    pub fn report_panic(info: &std::panic::PanicHookInfo<'_>) -> String {
        // What `PanicHookInfo::payload_as_str` does, which needs Rust 1.91
        // (the crate's rust-version is 1.85).
        let p = info.payload();
        let payload = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic payload that is not a string)");
        panic_report(info.location(), payload)
    }

    /// Sends a panic's message and location to `host.log` at error level
    /// before the instance traps (wasm32-wasip2 aborts on panic, which is a
    /// wasm `unreachable`; the hook runs first). The worker puts it in the
    /// record's dead letter. Replaces the default hook, which would print
    /// the same panic to stderr and have it captured twice.
    pub(crate) fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::log::error(&report_panic(info));
                }));
            });
        }
    }

    /// Compile-time check that `f` is usable with `export_transform!`.
    pub fn check_signature<F, R>(_f: F)
    where
        F: Fn(Record) -> R,
        R: IntoTransformResult,
    {
    }

    pub fn run_one<F, R>(input: InputRecord, f: F) -> RawTransformResult
    where
        F: FnOnce(Record) -> R,
        R: IntoTransformResult,
    {
        install_panic_hook();
        result_to_raw(f(record_from_raw(input)).into_transform_result())
    }

    pub fn run_batch<F, R>(inputs: Vec<InputRecord>, f: F) -> Vec<RawTransformResult>
    where
        F: Fn(Record) -> R,
        R: IntoTransformResult,
    {
        install_panic_hook();
        inputs
            .into_iter()
            .map(|input| result_to_raw(f(record_from_raw(input)).into_transform_result()))
            .collect()
    }
}

/// Exports a plain function as this component's transform.
///
/// The function takes a [`Record`] and returns `Result<Vec<Output>, E>`,
/// `Result<Option<Output>, E>` or `Result<Output, E>` with
/// `E: Into<TransformError>`. It is exported as both
/// `pipeline:transform/transformer.transform` and
/// `pipeline:transform/batch-transformer.transform-batch` (one result per
/// input, in order). Invoke it once, at the crate root of a `cdylib` crate.
///
/// ```ignore
/// fn price(record: pipeline_sdk::Record) -> pipeline_sdk::TransformResult { ... }
/// pipeline_sdk::export_transform!(price);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($func:path) => {
        // The component exports only exist when compiling to wasm: on the host
        // target (unit tests) the function is just type-checked.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        struct __PipelineSdkComponent;

        #[cfg(target_arch = "wasm32")]
        impl $crate::__private::TransformerGuest for __PipelineSdkComponent {
            fn transform(
                input: $crate::__private::InputRecord,
            ) -> $crate::__private::RawTransformResult {
                $crate::__private::run_one(input, $func)
            }
        }

        #[cfg(target_arch = "wasm32")]
        impl $crate::__private::BatchTransformerGuest for __PipelineSdkComponent {
            fn transform_batch(
                inputs: $crate::__private::Vec<$crate::__private::InputRecord>,
            ) -> $crate::__private::Vec<$crate::__private::RawTransformResult> {
                $crate::__private::run_batch(inputs, $func)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_transform_batch_raw!(__PipelineSdkComponent with_types_in $crate::bindings);

        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        #[allow(dead_code)]
        fn __pipeline_sdk_check_transform_signature() {
            $crate::__private::check_signature($func);
        }
    };
}

/// Exports a columnar function (feature `columnar`): one call per batch,
/// an Arrow [`RecordBatch`](columnar::RecordBatch) in and one out.
///
/// The function is `fn(RecordBatch) -> Result<RecordBatch, TransformError>`;
/// the component targets the world `pipeline:transform/transform-columnar`
/// (it does not export the per-record `transformer`, so invoke either this
/// or [`export_transform!`], not both). The output batch must have a `_row`
/// column (see [`columnar::with_row_index`]); an `Err` refuses the whole
/// batch, and a panic traps with its message logged at error level first.
///
/// ```ignore
/// fn double(batch: RecordBatch) -> Result<RecordBatch, TransformError> { ... }
/// pipeline_sdk::export_columnar!(double);
/// ```
#[cfg(feature = "columnar")]
#[macro_export]
macro_rules! export_columnar {
    ($func:path) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        struct __PipelineSdkColumnar;

        #[cfg(target_arch = "wasm32")]
        impl $crate::columnar::__private::ColumnarGuest for __PipelineSdkColumnar {
            fn transform_columns(
                batch: $crate::columnar::__private::Vec<u8>,
            ) -> ::core::result::Result<
                $crate::columnar::__private::Vec<u8>,
                $crate::__private::RawTransformError,
            > {
                $crate::columnar::__private::run_columns(batch, $func)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::columnar::bindings::__export_transform_columnar_raw!(__PipelineSdkColumnar with_types_in $crate::columnar::bindings);

        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        #[allow(dead_code)]
        fn __pipeline_sdk_check_columnar_signature() {
            $crate::columnar::__private::check_signature($func);
        }
    };
}

/// Without the `columnar` feature: a compile error that says how to get it.
#[cfg(not(feature = "columnar"))]
#[macro_export]
macro_rules! export_columnar {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "pipeline_sdk::export_columnar! needs the SDK's `columnar` feature: pipeline-sdk = { ..., features = [\"columnar\"] }"
        );
    };
}

#[cfg(test)]
mod tests;

#[cfg(all(test, feature = "columnar"))]
mod columnar_tests;
