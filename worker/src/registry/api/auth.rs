//! Bearer tokens → tenants. Checked by a middleware from the headers alone,
//! before any handler runs, so a request without a valid token never has a
//! byte of its body read (and never gets a `100 Continue`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{err, Api, ApiResult, ServeError};
use crate::config::ControlConfig;

/// The tenant a request's token belongs to, put in the request's extensions
/// by [`require_token`].
#[derive(Clone, Debug)]
pub struct Tenant(pub String);

/// (tenant, sha256(token)); the config holds only hashes.
pub struct Tokens(Vec<(String, [u8; 32])>);

impl Tokens {
    pub fn from_config(control: &ControlConfig) -> Result<Self, ServeError> {
        let mut tenants = Vec::new();
        for (index, t) in control.tenants.iter().enumerate() {
            let hash = match (&t.token_sha256, &t.token_env) {
                (Some(hex), _) => {
                    let mut h = [0u8; 32];
                    for (i, b) in h.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
                    }
                    h
                }
                (None, Some(var)) => {
                    let token = std::env::var(var).unwrap_or_default();
                    if token.trim().is_empty() {
                        return Err(ServeError::TokenEnv {
                            index,
                            var: var.clone(),
                        });
                    }
                    Sha256::digest(token.trim().as_bytes()).into()
                }
                (None, None) => unreachable!("config validation requires one"),
            };
            tenants.push((t.name.clone(), hash));
        }
        Ok(Self(tenants))
    }

    /// The tenant the bearer token belongs to.
    pub fn authenticate(&self, headers: &HeaderMap) -> ApiResult<String> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing Authorization: Bearer <token>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                err(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every tenant without stopping early.
        let mut found = None;
        for (name, h) in &self.0 {
            let diff = h.iter().zip(hash.iter()).fold(0u8, |a, (x, y)| a | (x ^ y));
            if diff == 0 {
                found = Some(name.clone());
            }
        }
        found.ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "the token is not valid for any tenant",
            )
        })
    }
}

/// Refuses a request without a valid token before its body is touched: the
/// connection is then closed with the body unread (hyper drains only what
/// already arrived), so an anonymous client cannot make the server read, or
/// hold, its upload. Only a declared body of at most 64 KiB is read, after
/// the refusal, so that small requests get their 401 instead of a reset.
pub async fn require_token(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    match api.tokens.authenticate(req.headers()) {
        Ok(tenant) => {
            req.extensions_mut().insert(Tenant(tenant));
            next.run(req).await
        }
        Err(e) => {
            if is_upload(&req) {
                api.metrics.upload(e.status.as_u16(), e.code);
            }
            // A small declared body is read and dropped after the refusal,
            // so the client sees the 401 rather than a connection reset (a
            // close with unread bytes in the socket resets it). The decision
            // was made from the headers alone; nothing larger is read.
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|n| n <= DRAIN_UNAUTHENTICATED_BYTES) {
                let body = req.into_body();
                if axum::body::to_bytes(body, DRAIN_UNAUTHENTICATED_BYTES)
                    .await
                    .is_ok()
                {
                    return e.into_response();
                }
                return close(e.into_response());
            }
            close(e.into_response())
        }
    }
}

/// Largest unauthenticated body read (and dropped) to answer 401 cleanly.
const DRAIN_UNAUTHENTICATED_BYTES: usize = 64 << 10;

/// The body stays unread; say so rather than let the client wait to send the
/// next request on this connection.
fn close(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

fn is_upload(req: &Request) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path().ends_with("/versions")
}
