//! The load-time allow-list. A component may import only what is listed
//! here; anything else (wasi:http, a vendor interface, ...) is refused before
//! it is compiled into a running instance, with the import named.
//!
//! WASI filesystem and sockets are on the list because every WASI 0.2
//! toolchain (componentize-py, Rust std, jco) imports them whether or not the
//! function uses them; they are linked to deny-all implementations instead
//! (no preopens, every address refused), so a call fails inside the guest.

use wasmtime::component::Component;
use wasmtime::Engine;

use super::LoadError;

/// The WIT package and the versions of it this worker accepts (see the
/// compatibility policy at the top of `sdk-wit/wit/transform.wit`).
pub const WORLD_PACKAGE: &str = "pipeline:transform";
/// For messages: the minors of [`WORLD_PACKAGE`] accepted, each at any patch.
pub const WORLD_VERSION_REQ: &str = "0.1.x or 0.2.x";

/// A minor of `pipeline:transform` this worker links. The host speaks 0.2;
/// a 0.1 component is converted at the boundary (see `sandbox::compat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitMinor {
    V0_1,
    V0_2,
}

impl WitMinor {
    fn parse(version: &str) -> Option<Self> {
        if version.starts_with("0.1.") {
            Some(Self::V0_1)
        } else if version.starts_with("0.2.") {
            Some(Self::V0_2)
        } else {
            None
        }
    }
}

/// What [`check_component_shape`] found out about a component.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The export that made it ours, e.g. `pipeline:transform/transformer@0.1.0`.
    pub export: String,
    /// Its version, e.g. `0.1.0`.
    pub version: String,
    pub minor: WitMinor,
    /// It exports `columnar-transformer` (world `transform-columnar`)
    /// instead of the per-record `transformer`.
    pub columnar: bool,
}

/// `namespace:package/interface`, each accepted at any `0.2.x` for WASI and
/// at any minor in [`WitMinor`] for ours.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "pipeline:transform/host",
    "pipeline:transform/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

fn wasi_version_ok(version: Option<&str>) -> bool {
    version.is_some_and(|v| v.starts_with("0.2."))
}

/// Checks imports against the allow-list and that the component exports our
/// `transformer` interface at a supported version, or (from 0.2) only the
/// `columnar-transformer` one.
pub fn check_component_shape(
    engine: &Engine,
    component: &Component,
    origin: &str,
) -> Result<Shape, LoadError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let (iface, version) = split_version(name);
        if !ALLOWED_IMPORTS.contains(&iface) {
            return Err(LoadError::ForbiddenImport {
                origin: origin.into(),
                import: name.to_string(),
            });
        }
        if iface.starts_with("wasi:") {
            if !wasi_version_ok(version) {
                return Err(LoadError::ForbiddenImport {
                    origin: origin.into(),
                    import: name.to_string(),
                });
            }
        } else if version.and_then(WitMinor::parse).is_none() {
            return Err(LoadError::UnsupportedWorldVersion {
                origin: origin.into(),
                found: version.unwrap_or("(no version)").to_string(),
            });
        }
    }
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let wanted = format!("{WORLD_PACKAGE}/transformer");
    let columnar = format!("{WORLD_PACKAGE}/columnar-transformer");
    let find = |w: &str| exports.iter().find(|n| split_version(n).0 == w);
    let (found, is_columnar) = match find(&wanted) {
        Some(n) => (Some(n), false),
        None => (find(&columnar), true),
    };
    if is_columnar {
        if let Some(n) = found {
            let v = split_version(n).1;
            if v.and_then(WitMinor::parse) == Some(WitMinor::V0_1) {
                return Err(LoadError::WrongWorld {
                    origin: origin.into(),
                    reason: format!(
                        "exports `{n}`, but columnar functions start at pipeline:transform@0.2"
                    ),
                });
            }
        }
    }
    match found {
        None => Err(LoadError::WrongWorld {
            origin: origin.into(),
            reason: format!(
                "does not export `{wanted}` (nor `{columnar}`): it is not a pipeline:transform@{WORLD_VERSION_REQ} function (its exports: {})",
                if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
            ),
        }),
        Some(n) => {
            let (_, v) = split_version(n);
            match v.and_then(WitMinor::parse) {
                Some(minor) => Ok(Shape {
                    export: n.clone(),
                    version: v.unwrap_or_default().to_string(),
                    minor,
                    columnar: is_columnar,
                }),
                None => Err(LoadError::UnsupportedWorldVersion {
                    origin: origin.into(),
                    found: v.unwrap_or("(no version)").to_string(),
                }),
            }
        }
    }
}
