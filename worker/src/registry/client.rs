//! `pipeline-worker functions ...`: the control API from the command line.
//! Prints the API's JSON answers (pretty), progress while uploading, and the
//! API's error code and message on a rejection (exit status 1).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct FunctionsArgs {
    /// Control API base URL.
    #[arg(
        long,
        env = "PIPELINE_WORKER_API",
        default_value = "http://127.0.0.1:8081"
    )]
    pub api: String,
    /// Bearer token of your tenant.
    #[arg(long, env = "PIPELINE_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: FunctionsCommand,
}

#[derive(Subcommand)]
pub enum FunctionsCommand {
    /// Upload a component as the next version of a function (validated and
    /// precompiled by the API before anything is stored).
    Upload {
        name: String,
        component: PathBuf,
        /// Activate it on this pipeline once stored.
        #[arg(long)]
        activate: Option<String>,
    },
    /// Your functions.
    List,
    /// A function's versions (or one version) and where each is active.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Run a version (default: the latest) on a pipeline, on every worker.
    /// With --dry-run: compare it with the active version on the pipeline's
    /// latest input records first, and switch nothing.
    Activate {
        pipeline: String,
        function: String,
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        dry_run: DryRunArgs,
    },
    /// Go back to the pipeline's previous version.
    Rollback { pipeline: String },
    /// Delete a version that is not active anywhere.
    Delete { name: String, version: u64 },
    /// Pipelines: what is active and what each worker runs.
    Status { pipeline: Option<String> },
}

/// `functions activate --dry-run`.
#[derive(Args)]
pub struct DryRunArgs {
    /// Activate nothing: run the last --records records of every input
    /// partition through the active version and this one, under the
    /// pipeline's limits, and show how they differ. Reads with no consumer
    /// group, commits nothing and produces nothing.
    #[arg(long, requires = "config")]
    pub dry_run: bool,
    /// The worker config the pipeline runs under (its [kafka] section, the
    /// [registry] store to fetch both components from, the pipeline's limits).
    #[arg(long, short, requires = "dry_run")]
    pub config: Option<PathBuf>,
    /// Records per input partition (its last N).
    #[arg(long, default_value_t = 100, requires = "dry_run", value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,
    /// Differing records shown in full.
    #[arg(long, default_value_t = 5, requires = "dry_run")]
    pub show: usize,
    /// How long the brokers may take to answer.
    #[arg(long, default_value = "10s", requires = "dry_run")]
    pub timeout: humantime::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the control API at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("--dry-run: {0}")]
    DryRun(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::registry::StoreError),
    /// Boxed: a replay's librdkafka error would make every `Result` here large.
    #[error(transparent)]
    Preview(Box<crate::localtest::LocalTestError>),
}

impl From<crate::localtest::LocalTestError> for ClientError {
    fn from(e: crate::localtest::LocalTestError) -> Self {
        Self::Preview(Box::new(e))
    }
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
        url: &str,
    ) -> Result<Value, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(|e| ClientError::Connect {
            url: url.to_string(),
            message: format!("{e}"),
        })?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(json!({"raw": text}));
        if status.is_success() {
            return Ok(body);
        }
        Err(api_error(status.as_u16(), &body))
    }

    fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        self.send(self.http.get(&url), &url)
    }

    fn post_json(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        let url = self.url(path);
        self.send(
            self.http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            &url,
        )
    }
}

/// Counts bytes as reqwest reads the body, for the progress line.
struct Counting<R> {
    inner: R,
    sent: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn upload(c: &Client, name: &str, path: &PathBuf) -> Result<Value, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let sent = Arc::new(AtomicU64::new(0));
    // Compile time the server last reported (ms).
    let server = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let progress = {
        let (sent, done, server) = (sent.clone(), done.clone(), server.clone());
        std::thread::spawn(move || {
            let mut err = std::io::stderr();
            while !done.load(Ordering::Relaxed) {
                let s = sent.load(Ordering::Relaxed);
                let line = if s < total {
                    format!(
                        "uploading {:>5.1}% ({s}/{total} bytes)",
                        100.0 * s as f64 / total.max(1) as f64
                    )
                } else {
                    match server.load(Ordering::Relaxed) {
                        0 => format!(
                            "uploaded {total} bytes; waiting for the server… {}s",
                            started.elapsed().as_secs()
                        ),
                        ms => format!(
                            "uploaded {total} bytes; server validating and precompiling… {}s",
                            ms / 1000
                        ),
                    }
                };
                let _ = write!(err, "\r{line:<80}");
                let _ = err.flush();
                std::thread::sleep(Duration::from_millis(250));
            }
            let _ = writeln!(
                err,
                "\r{:<80}",
                format!(
                    "uploaded {} of {total} bytes; server answered after {:.1}s",
                    sent.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                )
            );
        })
    };
    let url = c.url(&format!("/v1/functions/{name}/versions"));
    let body = reqwest::blocking::Body::sized(
        Counting {
            inner: file,
            sent: sent.clone(),
        },
        total,
    );
    let result = match upload_stream(c, &url, body, &server) {
        // The server answers a refusal before reading a body it will not
        // read on (over twice control.max_component_bytes), so the answer
        // is lost in the reset; say what the likely refusal is.
        Err(ClientError::Connect { url, message }) if sent.load(Ordering::Relaxed) < total => {
            Err(ClientError::Connect {
                message: format!(
                    "{message} (the connection closed after {} of {total} bytes; a component \
                     over twice control.max_component_bytes is refused unread)",
                    sent.load(Ordering::Relaxed)
                ),
                url,
            })
        }
        r => r,
    };
    done.store(true, Ordering::Relaxed);
    let _ = progress.join();
    result
}

/// Sends the upload asking for a progress stream; returns the manifest or
/// the API's error from the final event.
fn upload_stream(
    c: &Client,
    url: &str,
    body: reqwest::blocking::Body,
    server: &AtomicU64,
) -> Result<Value, ClientError> {
    let mut req = c
        .http
        .post(url)
        .header("content-type", "application/wasm")
        .header("accept", "application/x-ndjson")
        .body(body);
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().map_err(|e| ClientError::Connect {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let streamed = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if !streamed {
        // Rejected before compiling (an ordinary JSON error), or a server
        // that does not stream.
        let status = resp.status();
        let body: Value =
            serde_json::from_str(&resp.text().unwrap_or_default()).unwrap_or(Value::Null);
        return if status.is_success() {
            Ok(body)
        } else {
            Err(api_error(status.as_u16(), &body))
        };
    }
    use std::io::BufRead;
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.map_err(|e| ClientError::Connect {
            url: url.to_string(),
            message: format!("progress stream cut: {e}"),
        })?;
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match event["event"].as_str() {
            Some("progress") => server.store(
                event["elapsed_ms"].as_u64().unwrap_or(0).max(1),
                Ordering::Relaxed,
            ),
            Some("result") => {
                let status = event["status"].as_u64().unwrap_or(500) as u16;
                return if status == 201 {
                    Ok(event["manifest"].clone())
                } else {
                    Err(api_error(status, &event))
                };
            }
            _ => {}
        }
    }
    Err(ClientError::Connect {
        url: url.to_string(),
        message: "the server closed the progress stream without a result".into(),
    })
}

fn api_error(status: u16, body: &Value) -> ClientError {
    ClientError::Api {
        status,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or("error")
            .to_string(),
        message: body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string()),
    }
}

pub fn run(args: FunctionsArgs) -> Result<(), ClientError> {
    let c = Client {
        base: args.api,
        token: args.token,
        // Precompiling a large Python component takes a while.
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| ClientError::Usage(e.to_string()))?,
    };
    let out = match args.command {
        FunctionsCommand::Upload {
            name,
            component,
            activate,
        } => {
            let m = upload(&c, &name, &component)?;
            eprintln!(
                "stored {name} version {} ({})",
                m["version"],
                m["digest"].as_str().unwrap_or("")
            );
            match activate {
                Some(p) => {
                    let a = c.post_json(
                        &format!("/v1/pipelines/{p}/activate"),
                        json!({"function": name, "version": m["version"]}),
                    )?;
                    eprintln!("activated on pipeline {p}");
                    json!({"upload": m, "activation": a})
                }
                None => m,
            }
        }
        FunctionsCommand::List => c.get("/v1/functions")?,
        FunctionsCommand::Show { name, version } => match version {
            Some(v) => c.get(&format!("/v1/functions/{name}/versions/{v}"))?,
            None => c.get(&format!("/v1/functions/{name}"))?,
        },
        FunctionsCommand::Activate {
            pipeline,
            function,
            version,
            dry_run,
        } if dry_run.dry_run => {
            return self::dry_run(&c, &pipeline, &function, version, &dry_run);
        }
        FunctionsCommand::Activate {
            pipeline,
            function,
            version,
            ..
        } => c.post_json(
            &format!("/v1/pipelines/{pipeline}/activate"),
            json!({"function": function, "version": version}),
        )?,
        FunctionsCommand::Rollback { pipeline } => {
            c.post_json(&format!("/v1/pipelines/{pipeline}/rollback"), json!({}))?
        }
        FunctionsCommand::Delete { name, version } => {
            let url = c.url(&format!("/v1/functions/{name}/versions/{version}"));
            c.send(c.http.delete(&url), &url)?
        }
        FunctionsCommand::Status { pipeline } => match pipeline {
            Some(p) => c.get(&format!("/v1/pipelines/{p}"))?,
            None => c.get("/v1/pipelines")?,
        },
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// `activate --dry-run`: what the control plane says is active and what the
/// candidate is, both components from the store (digests checked), then the
/// comparison. Never posts anything.
fn dry_run(
    c: &Client,
    pipeline: &str,
    function: &str,
    version: Option<u64>,
    args: &DryRunArgs,
) -> Result<(), ClientError> {
    let path = args.config.as_ref().expect("clap requires --config");
    let view = c.get(&format!("/v1/pipelines/{pipeline}"))?;
    let active = &view["active"];
    if active.is_null() {
        return Err(ClientError::DryRun(format!(
            "pipeline {pipeline} has no active version to compare with; try the candidate on its input with `pipeline-worker test --config {} --pipeline {pipeline} --component FILE --replay`",
            path.display()
        )));
    }
    let manifest = match version {
        Some(v) => c.get(&format!("/v1/functions/{function}/versions/{v}"))?,
        None => c.get(&format!("/v1/functions/{function}"))?["versions"]
            .as_array()
            .and_then(|v| v.last().cloned())
            .ok_or_else(|| ClientError::DryRun(format!("function {function} has no versions")))?,
    };
    let field = |v: &Value, k: &str| -> Result<String, ClientError> {
        match &v[k] {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ClientError::DryRun(format!(
                "the control API's answer has no `{k}`: {v}"
            ))),
        }
    };
    let a_digest = field(active, "digest")?;
    let c_digest = field(&manifest, "digest")?;
    let a_label = format!(
        "{}@{}",
        field(active, "function")?,
        field(active, "version")?
    );
    let c_label = format!(
        "{}@{}",
        field(&manifest, "function")?,
        field(&manifest, "version")?
    );
    let input_topics: Vec<String> = view["input_topics"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if input_topics.is_empty() {
        return Err(ClientError::DryRun(format!(
            "the control API reports no input topics for pipeline {pipeline}: {view}"
        )));
    }
    let config = crate::config::Config::load(path)?;
    let Some(registry) = &config.registry else {
        return Err(ClientError::DryRun(format!(
            "{}: config key `registry`: missing; the components are fetched from its store",
            path.display()
        )));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::DryRun(format!("runtime: {e}")))?;
    let (a_bytes, c_bytes) = {
        let _guard = rt.enter();
        let store = super::FunctionStore::open(registry, &config.base_dir)?;
        let a = rt.block_on(store.get_blob(&a_digest))?;
        let b = rt.block_on(store.get_blob(&c_digest))?;
        (a, b)
    };
    println!("dry run: pipeline {pipeline}, active {a_label} ({a_digest}), candidate {c_label} ({c_digest})");
    if a_digest == c_digest {
        println!("the candidate is the active component (same digest); its outputs can only differ where the function is not deterministic");
    }
    let summary = crate::localtest::preview::preview(crate::localtest::preview::Request {
        config: &config,
        config_path: path,
        pipeline,
        input_topics,
        active: crate::localtest::preview::Version {
            label: a_label,
            bytes: a_bytes,
        },
        candidate: crate::localtest::preview::Version {
            label: c_label.clone(),
            bytes: c_bytes,
        },
        records: args.records,
        timeout: args.timeout.into(),
        show: args.show,
    })?;
    println!(
        "nothing was activated (dry run); to switch: pipeline-worker functions activate {pipeline} {function} --version {}",
        c_label.rsplit('@').next().unwrap_or_default()
    );
    let _ = summary;
    Ok(())
}
