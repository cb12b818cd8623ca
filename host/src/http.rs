//! HTTP plumbing shared by the worker and the router: admin access checks, request ids,
//! metrics rendering, and reading an admin policy upload.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::REQUEST_ID;
use locus_policy::{Actor, LoadError, PolicySource};

pub use crate::api::{ApiError, parse_json};

/// Request header naming who makes an admin change, for the audit log.
pub const ACTOR_HEADER: &str = "x-locus-actor";

/// Request header giving the reason of an admin change, for the audit log.
pub const REASON_HEADER: &str = "x-locus-reason";

/// Who asks for an admin change, from [`ACTOR_HEADER`] and [`REASON_HEADER`] (UTF-8, read
/// leniently); `admin-api` when the caller does not say.
pub fn actor(headers: &HeaderMap) -> Actor {
    let read = |name: &str| {
        headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    };
    let who = read(ACTOR_HEADER).filter(|w| !w.is_empty()).unwrap_or_else(|| "admin-api".into());
    Actor::new(who, read(REASON_HEADER).unwrap_or_default())
}

/// Default limit of an admin component upload: real components with debug line tables
/// run to a few MB, so this leaves room for ten times that.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// Who may call an admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Needs the token; disabled when none is configured.
    TokenRequired,
    /// Needs the token when one is configured; open otherwise.
    OpenWithoutToken,
}

/// Checks `Authorization: Bearer <token>` against the configured `token`.
pub fn check_admin(
    headers: &HeaderMap,
    token: Option<&str>,
    access: Access,
) -> Result<(), ApiError> {
    match (token, access) {
        (None, Access::OpenWithoutToken) => Ok(()),
        (None, Access::TokenRequired) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this admin endpoint is disabled: start with --admin-token (or LOCUS_ADMIN_TOKEN)",
        )),
        (Some(expected), _) => check_bearer(headers, expected),
    }
}

/// Who may call the routes behind [`require_admin`].
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// The configured token.
    pub token: Option<String>,
    /// What to do without one.
    pub access: Access,
}

/// A layer (`from_fn_with_state`) that refuses a request before its body is read unless
/// it carries the admin token.
pub async fn require_admin(State(auth): State<AdminAuth>, req: Request, next: Next) -> Response {
    match check_admin(req.headers(), auth.token.as_deref(), auth.access) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut resp = e.into_response();
            // The body was not read, so the connection cannot carry another request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// 404 in the one error shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no endpoint {}", uri.path()))
}

/// 405 in the one error shape.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {method}", uri.path()))
}

/// The token of `Authorization: Bearer <token>` in `headers`, if there is one (the scheme is
/// case-insensitive, RFC 9110 section 11.1).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn check_bearer(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>` header",
        )),
    }
}

/// Whether a cluster or worker token may be sent to `url`: over https; to a loopback host
/// (127.0.0.0/8, ::1, `localhost`); or over plain HTTP to any host when the operator said
/// the cluster's network is private (`over_http`, `--cluster-token-over-http`). Plain
/// HTTP elsewhere would hand the token to anyone who can read the network.
pub fn may_carry_token(url: &str, over_http: bool) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let loopback = u.host_str().is_some_and(|h| {
        match h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => {
                let h = h.to_ascii_lowercase();
                h == "localhost" || h.ends_with(".localhost")
            }
        }
    });
    match u.scheme() {
        "https" => true,
        "http" => loopback || over_http,
        _ => false,
    }
}

/// Logs, once per process and `what`, that a token was kept from a plain-HTTP host.
pub fn warn_token_withheld(what: &'static str, url: &str) {
    static WARNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&what) {
        warned.push(what);
        tracing::warn!(to = %url, "{what}: not sending the cluster token over plain HTTP to a \
            host that is not loopback; pass --cluster-token-over-http (LOCUS_CLUSTER_TOKEN_OVER_HTTP) \
            if the cluster's network is private");
    }
}

/// Equality of secrets in time that depends on their lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id of the request being served: the client's `X-Request-Id` (printable ASCII, at
/// most 128 bytes), or a new one. An extractor rather than a middleware layer, so that
/// only the generation endpoints pay for it; their handlers return it with [`tagged`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id in `headers`, or a new one: a per-process random prefix and a counter, as
    /// unique as a random id and cheaper to make.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let given = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
        match given {
            Some(id) => Self(id.to_string()),
            None => {
                let prefix = *PREFIX.get_or_init(rand::random::<u64>);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Self(format!("{prefix:016x}{n:016x}"))
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

/// `resp` with the request's id in its `X-Request-Id` header.
pub fn tagged(mut resp: Response, id: &RequestId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Renders a Prometheus registry in the text format.
pub fn render_metrics(registry: &prometheus::Registry) -> Response {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut buf) {
        return ApiError::internal(e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// The policy of an admin swap request: the body is a component, or the body is empty
/// and `?name=` names a built-in. `name` is taken out of `query`; the rest are settings.
pub fn uploaded_policy(
    body: &[u8],
    query: &mut BTreeMap<String, String>,
) -> Result<PolicySource, ApiError> {
    let name = query.remove("name");
    if !body.is_empty() {
        let name = name.unwrap_or_else(|| "upload.wasm".into());
        return Ok(PolicySource::Bytes { name, bytes: body.to_vec() });
    }
    let Some(name) = name else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send the component as the body, or ?name=<built-in>",
        ));
    };
    match PolicySource::parse(&name) {
        Ok(PolicySource::File(_)) | Err(_) => Err(ApiError::invalid(
            "name",
            format!("`{name}` is not a built-in policy; upload the component as the body"),
        )),
        Ok(source) => Ok(source),
    }
}

/// Answers an admin swap request: reads the policy from the upload (see
/// [`uploaded_policy`]), runs `swap(source, settings)` off the async threads (compiling
/// takes tens of milliseconds) and answers `{"swapped": true, "policy": ...}`, or 400
/// `policy_rejected` with the serving policy unchanged.
pub async fn swap_uploaded<T: serde::Serialize + Send + 'static>(
    body: &[u8],
    mut query: BTreeMap<String, String>,
    swap: impl FnOnce(PolicySource, Vec<(String, String)>) -> Result<T, LoadError> + Send + 'static,
) -> Response {
    let source = match uploaded_policy(body, &mut query) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let settings = query.into_iter().collect();
    match tokio::task::spawn_blocking(move || swap(source, settings)).await {
        Ok(Ok(info)) => {
            axum::Json(serde_json::json!({"swapped": true, "policy": info})).into_response()
        }
        Ok(Err(e)) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            .with_code("policy_rejected")
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// A registry holding `collectors` (metric names are fixed at build time, so a clash is a
/// programming error).
pub fn registry(collectors: Vec<Box<dyn prometheus::core::Collector>>) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    for c in collectors {
        registry.register(c).expect("metric names are unique");
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::may_carry_token;

    #[test]
    fn a_token_goes_over_plain_http_only_to_loopback_unless_the_operator_says_so() {
        for url in
            ["http://127.0.0.1:8001", "http://127.3.4.5", "http://[::1]:80", "http://localhost:1"]
        {
            assert!(may_carry_token(url, false), "{url}");
        }
        for url in ["http://10.0.0.5:8001", "http://worker-1:8001", "http://[fe80::1]:1"] {
            assert!(!may_carry_token(url, false), "{url}");
            assert!(may_carry_token(url, true), "{url}");
        }
        assert!(may_carry_token("https://worker-1:8443", false));
        assert!(!may_carry_token("ftp://127.0.0.1", true));
        assert!(!may_carry_token("not a url", true));
    }
}
