//! HTTP plumbing shared by the worker and the router: JSON errors, request parsing that
//! names the offending field, bearer-token checks.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

use crate::policy::PolicySource;
use serde_json::json;

/// An error answered as `{"error": {"message", "type", "field"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (429/503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None, retry_after: None }
    }

    /// 422: `field` has a value the server cannot use.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message) }
    }

    /// Overloaded: retry after `secs`.
    pub fn overloaded(status: StatusCode, message: impl Into<String>, secs: u64) -> Self {
        Self { retry_after: Some(secs), ..Self::new(status, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            400 | 413 | 422 => "invalid_request_error",
            401 | 403 => "authentication_error",
            404 => "not_found_error",
            429 | 503 => "overloaded_error",
            _ => "server_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "field": self.field}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a JSON body into `T`: malformed JSON is 400, a field of the wrong type or a
/// missing field is 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "request body is empty; send JSON"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}"))
        } else {
            let field = if path == "." { None } else { Some(path) };
            ApiError { field, ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, inner.to_string()) }
        }
    })
}

/// Checks `Authorization: Bearer <token>` against `expected`.
pub fn check_bearer(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: start with --admin-token (or LOCUS_ADMIN_TOKEN)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>` header",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Renders a Prometheus registry in the text format.
pub fn render_metrics(registry: &prometheus::Registry) -> Response {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut buf) {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// A listener whose connections have Nagle's algorithm off: an answer is written in
/// several small pieces (headers, SSE events), and with Nagle on, each piece after the
/// first waits for the client's delayed ACK (~40 ms).
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    })
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

/// A registry holding `collectors` (metric names are fixed at build time, so a clash is a
/// programming error).
pub fn registry(collectors: Vec<Box<dyn prometheus::core::Collector>>) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    for c in collectors {
        registry.register(c).expect("metric names are unique");
    }
    registry
}
