//! Exit codes (also in the README):
//! - 0: stopped cleanly (SIGTERM/SIGINT, or the command succeeded);
//! - 1: configuration, start-up or command error (nothing was processed past it);
//! - 2: command-line usage error (from clap);
//! - 3: fatal data-path error: continuing could have lost or reordered
//!   records (producer fenced or out of order, dead-letter topic not writable
//!   after bounded retries); nothing past it was committed;
//! - 4: a pipeline thread (consumer, sandbox or sink) died.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pipeline_worker::sink::FatalError;
use pipeline_worker::{app, config::Config, dev, dlq, localtest, registry, scaffold};

/// Configuration, start-up or command error.
const EXIT_ERROR: u8 = 1;

/// Kafka consumer-group worker that runs every record through a sandboxed
/// WebAssembly component.
#[derive(Parser)]
#[command(name = "pipeline-worker", version)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, env = "PIPELINE_WORKER_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up, so `test`'s many flags making the enum large cost nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Join the consumer group(s) and process records until SIGTERM.
    Run {
        #[arg(long, short, env = "PIPELINE_WORKER_CONFIG")]
        config: PathBuf,
    },
    /// Serve only the control API (uploads, versions, activations).
    Control {
        #[arg(long, short, env = "PIPELINE_WORKER_CONFIG")]
        config: PathBuf,
    },
    /// Upload, list, show, activate, roll back and delete functions through
    /// the control API.
    Functions(registry::client::FunctionsArgs),
    /// Check the config, load every component, and check that the brokers
    /// answer and every declared topic exists, without consuming.
    Validate {
        #[arg(long, short, env = "PIPELINE_WORKER_CONFIG")]
        config: PathBuf,
        /// Skip the broker and topic checks (CI of config files, no Kafka).
        #[arg(long)]
        offline: bool,
        /// How long the broker and topic checks may take (e.g. 10s, 500ms).
        #[arg(long, default_value = "10s")]
        timeout: humantime::Duration,
    },
    /// Run the main job on an in-process Kafka cluster: sample records through
    /// the bundled example function, enriched output printed.
    Dev(dev::DevArgs),
    /// Run sample records, or records replayed from a topic (committing and
    /// producing nothing), as a pipeline would: same sandbox, limits, batch
    /// size, tombstones and output-topic check; compare with a golden file;
    /// non-zero exit on a mismatch or an unexpected error.
    Test(localtest::TestArgs),
    /// Create a function project: source, sample records, expected output.
    Init(scaffold::InitArgs),
    /// Build a function project into a component (componentize-py, cargo, jco).
    Build(scaffold::BuildArgs),
    /// List a pipeline's dead letters (`dlq [list]`) or re-drive them to its
    /// input topic (`dlq redrive`); joins no consumer group.
    Dlq(dlq::DlqArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads the log format from its config when no flag says otherwise;
    // the config is read once, before logging starts.
    let mut run_config = match &cli.command {
        Command::Run { config } | Command::Control { config } => Some(Config::load(config)),
        _ => None,
    };
    let configured = run_config
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .and_then(|c| c.telemetry.log_format.clone());
    let format = cli.log_format.unwrap_or(match configured.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    init_logging(format);
    install_panic_hook(format);
    let result = match cli.command {
        Command::Run { .. } => run_config
            .take()
            .expect("loaded above")
            .map_err(anyhow::Error::from)
            .and_then(app::run),
        Command::Control { .. } => run_config
            .take()
            .expect("loaded above")
            .map_err(anyhow::Error::from)
            .and_then(app::control),
        Command::Functions(args) => registry::client::run(args).map_err(anyhow::Error::from),
        Command::Validate {
            config,
            offline,
            timeout,
        } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                app::check_memory_budget(&c)?;
                let opts = app::sandbox_options(&c)?;
                let fs = app::load_functions(&c, &opts)?;
                for (p, f) in &fs {
                    println!(
                        "ok  pipeline {:<20} {} ({} bytes, batch export: {}, {} ms{})",
                        p.name,
                        f.digest,
                        f.load_report.size_bytes,
                        f.load_report.exports_batch,
                        f.load_report.load_ms,
                        if f.load_report.from_cache {
                            ", cached"
                        } else {
                            ", compiled"
                        }
                    );
                }
                if offline {
                    println!("--offline: brokers and topics not checked");
                } else {
                    println!("ok  {}", app::check_cluster(&c, timeout.into())?);
                }
                println!("config valid: {} pipeline(s)", c.pipelines.len());
                Ok(())
            }),
        Command::Dev(args) => dev::run(args),
        Command::Test(args) => localtest::run(args).map_err(anyhow::Error::from),
        Command::Init(args) => scaffold::init(args),
        Command::Build(args) => scaffold::build(args),
        Command::Dlq(args) => dlq::run(args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                // A collector keeps JSON lines: the last word is one too.
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "exiting"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            match e.downcast_ref::<FatalError>() {
                Some(f) => ExitCode::from(f.kind.exit_code()),
                None => ExitCode::from(EXIT_ERROR),
            }
        }
    }
}

/// Every panic, on any thread, becomes exactly one log line (thread,
/// message, location; the backtrace as a field when `RUST_BACKTRACE` asks for
/// one) in the configured format, so a dead thread is visible in the logs a
/// collector keeps. The default report is not printed as well: its several
/// lines would reach a JSON collector as garbage.
fn install_panic_hook(format: LogFormat) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        // Captured only when RUST_BACKTRACE / RUST_LIB_BACKTRACE ask for it.
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() != std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread, panic = %message, location = %location, "thread panicked");
            return;
        }
        let backtrace = backtrace.to_string();
        match format {
            // serde escapes the newlines inside the JSON string.
            LogFormat::Json => {
                tracing::error!(thread, panic = %message, location = %location, backtrace = %backtrace, "thread panicked")
            }
            // Debug quotes it with `\n` escapes: still one line.
            LogFormat::Text => {
                tracing::error!(thread, panic = %message, location = %location, backtrace = ?backtrace, "thread panicked")
            }
        }
    }));
}

/// Colour only for a person at a terminal: never in a file or a pipe, and
/// never when NO_COLOR is set to anything non-empty (no-color.org).
fn ansi(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(super::ansi(true, None));
        assert!(
            super::ansi(true, Some("".into())),
            "empty NO_COLOR is unset"
        );
        assert!(!super::ansi(true, Some("1".into())));
        assert!(!super::ansi(false, None));
    }
}
