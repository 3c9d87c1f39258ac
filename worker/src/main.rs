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
use pipeline_worker::{app, config::Config, dev, localtest, registry, scaffold};

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
    /// Check the config and load every component, without consuming.
    Validate {
        #[arg(long, short, env = "PIPELINE_WORKER_CONFIG")]
        config: PathBuf,
    },
    /// Run the main job on an in-process Kafka cluster: sample records through
    /// the bundled example function, enriched output printed.
    Dev(dev::DevArgs),
    /// Run sample records through a component in the production sandbox (no
    /// Kafka); compare with a golden file; non-zero exit on a mismatch or trap.
    Test(localtest::TestArgs),
    /// Create a function project: source, sample records, expected output.
    Init(scaffold::InitArgs),
    /// Build a function project into a component (componentize-py, cargo, jco).
    Build(scaffold::BuildArgs),
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
    init_logging(cli.log_format.unwrap_or(match configured.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }));
    install_panic_hook();
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
        Command::Validate { config } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
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
                println!("config valid: {} pipeline(s)", fs.len());
                Ok(())
            }),
        Command::Dev(args) => dev::run(args),
        Command::Test(args) => localtest::run(args),
        Command::Init(args) => scaffold::init(args),
        Command::Build(args) => scaffold::build(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<FatalError>() {
                Some(f) => ExitCode::from(f.kind.exit_code()),
                None => ExitCode::from(EXIT_ERROR),
            }
        }
    }
}

/// Every panic, on any thread, becomes one log line (thread, message,
/// location) in the configured format before the default report, so a dead
/// thread is visible in the logs a collector keeps.
fn install_panic_hook() {
    let default = std::panic::take_hook();
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
        tracing::error!(thread, panic = %message, location = %location, "thread panicked");
        default(info);
    }));
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}
