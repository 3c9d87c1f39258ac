//! Logging through the `pipeline:transform/host.log` import.
//!
//! Lines go to the worker's log, attributed to this function; the host
//! rate-limits and truncates them. Outside wasm (unit tests on the host
//! target) they are printed to stderr instead.
//!
//! ```
//! pipeline_sdk::log::info!("priced {} items", 3);
//! pipeline_sdk::log::warn("plain &str works too");
//! ```

/// Severity of a log line (mirrors the WIT enum `host.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one line to the worker's log.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::pipeline::transform::host;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!("[{}] {}", level.as_str(), message);
    }
}

pub fn trace(message: &str) {
    log(Level::Trace, message)
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}

#[doc(inline)]
pub use crate::__pipeline_sdk_warn as warn;
#[doc(inline)]
pub use crate::{__pipeline_sdk_debug as debug, __pipeline_sdk_error as error};
#[doc(inline)]
pub use crate::{__pipeline_sdk_info as info, __pipeline_sdk_trace as trace};

/// `trace!("fmt", args..)`: formats and logs at trace level.
#[doc(hidden)]
#[macro_export]
macro_rules! __pipeline_sdk_trace {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}

/// `debug!("fmt", args..)`: formats and logs at debug level.
#[doc(hidden)]
#[macro_export]
macro_rules! __pipeline_sdk_debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

/// `info!("fmt", args..)`: formats and logs at info level.
#[doc(hidden)]
#[macro_export]
macro_rules! __pipeline_sdk_info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

/// `warn!("fmt", args..)`: formats and logs at warn level.
#[doc(hidden)]
#[macro_export]
macro_rules! __pipeline_sdk_warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

/// `error!("fmt", args..)`: formats and logs at error level.
#[doc(hidden)]
#[macro_export]
macro_rules! __pipeline_sdk_error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+)) };
}
