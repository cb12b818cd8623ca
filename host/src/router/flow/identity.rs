//! Who is asking: an API key naming a tenant and the highest priority it may ask for, or,
//! without keys, the operator's tenant header; and the band a request asks for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::options::FlowOptions;
use crate::api::{ApiError, TOP_BAND};

/// Longest tenant name taken from a header or a key file, in bytes.
pub const MAX_TENANT_BYTES: usize = 128;

/// Who asks, and in which band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The tenant: a key's, the tenant header's, or empty (one shared tenant).
    pub tenant: Arc<str>,
    /// The band, 0 (lowest) to 3, capped at the key's maximum.
    pub priority: u8,
}

/// One key's grant.
struct Grant {
    /// SHA-256 of the key: every key is compared at the same length, in constant time.
    digest: [u8; 32],
    tenant: Arc<str>,
    max_priority: u8,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file cannot be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The data-plane API keys (none: identity from headers), reloadable.
pub struct ApiKeys {
    path: Option<PathBuf>,
    default_priority: u8,
    grants: ArcSwap<Vec<Grant>>,
}

impl ApiKeys {
    /// Reads `opts.api_keys`, if set.
    pub fn load(opts: &FlowOptions) -> Result<Self, KeysError> {
        let keys = Self {
            path: opts.api_keys.clone(),
            default_priority: opts.default_priority,
            grants: ArcSwap::from_pointee(Vec::new()),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Whether requests need a key.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the file; on any error the keys in use are kept. Returns how many keys
    /// there are now.
    pub fn reload(&self) -> Result<usize, KeysError> {
        let Some(path) = &self.path else { return Ok(0) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeysError::Read { path: path.clone(), source })?;
        let grants = parse(path, &text, self.default_priority)?;
        let n = grants.len();
        self.grants.store(Arc::new(grants));
        Ok(n)
    }

    /// Who sent a request with `headers`: 401 without a valid key (when keys are on), 400
    /// for a tenant or priority header that cannot be read.
    pub fn identify(&self, headers: &HeaderMap, opts: &FlowOptions) -> Result<Identity, ApiError> {
        let asked = priority(headers, opts)?;
        if !self.enabled() {
            let tenant = match headers.get(opts.tenant_header.as_str()) {
                None => "",
                Some(v) => {
                    let t = v.to_str().map_err(|_| {
                        ApiError::invalid(&opts.tenant_header, "the tenant must be visible ASCII")
                    })?;
                    if t.len() > MAX_TENANT_BYTES {
                        return Err(ApiError::invalid(
                            &opts.tenant_header,
                            format!("the tenant is longer than {MAX_TENANT_BYTES} bytes"),
                        ));
                    }
                    t.trim()
                }
            };
            return Ok(Identity { tenant: tenant.into(), priority: asked });
        }
        let key = crate::http::bearer(headers)
            .ok_or_else(|| unauthorized("no API key given: send `Authorization: Bearer KEY`"))?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let grants = self.grants.load();
        // Every grant is compared, so the time taken does not tell which one matched.
        let mut found: Option<&Grant> = None;
        for g in grants.iter() {
            if constant_time_eq(&g.digest, &digest) {
                found = Some(g);
            }
        }
        let g = found.ok_or_else(|| unauthorized("the API key is not valid"))?;
        Ok(Identity { tenant: g.tenant.clone(), priority: asked.min(g.max_priority) })
    }
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg).with_code("invalid_api_key")
}

/// The band asked for by the priority header, or the default.
fn priority(headers: &HeaderMap, opts: &FlowOptions) -> Result<u8, ApiError> {
    let Some(v) = headers.get(opts.priority_header.as_str()) else {
        return Ok(opts.default_priority);
    };
    v.to_str().ok().and_then(|s| s.trim().parse::<u8>().ok()).filter(|p| *p <= TOP_BAND).ok_or_else(
        || {
            ApiError::invalid(
                &opts.priority_header,
                format!("the priority must be a whole number from 0 to {TOP_BAND}"),
            )
        },
    )
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads `KEY TENANT [MAX_PRIORITY]` lines.
fn parse(path: &Path, text: &str, default_priority: u8) -> Result<Vec<Grant>, KeysError> {
    let mut grants = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| KeysError::Line { path: path.into(), line: i + 1, reason };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (key, tenant, max) = match fields[..] {
            [k, t] => (k, t, default_priority),
            [k, t, p] => {
                let p = p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= TOP_BAND)
                    .ok_or_else(|| bad(format!("MAX_PRIORITY `{p}` is not 0 to {TOP_BAND}")))?;
                (k, t, p)
            }
            _ => return Err(bad("expected `KEY TENANT [MAX_PRIORITY]`".into())),
        };
        if key.len() < 16 {
            return Err(bad("the key is shorter than 16 characters".into()));
        }
        if tenant.len() > MAX_TENANT_BYTES {
            return Err(bad(format!("the tenant is longer than {MAX_TENANT_BYTES} bytes")));
        }
        grants.push(Grant {
            digest: Sha256::digest(key.as_bytes()).into(),
            tenant: tenant.into(),
            max_priority: max,
        });
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> (ApiKeys, FlowOptions, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, text).unwrap();
        let opts = FlowOptions { api_keys: Some(path), ..FlowOptions::default() };
        (ApiKeys::load(&opts).unwrap(), opts, dir)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_key_names_the_tenant_and_caps_the_priority() {
        let (k, o, _d) = keys("# keys\nkey-of-batch-00000 batch 0\nkey-of-chat-000000 chat 3\n");
        let id = k.identify(
            &headers(&[("authorization", "Bearer key-of-batch-00000"), ("x-priority", "3")]),
            &o,
        );
        assert_eq!(id.unwrap(), Identity { tenant: "batch".into(), priority: 0 });
        let id = k.identify(&headers(&[("authorization", "Bearer key-of-chat-000000")]), &o);
        assert_eq!(id.unwrap(), Identity { tenant: "chat".into(), priority: 1 });
        // The scheme is case-insensitive (RFC 9110 section 11.1), as for the admin token.
        let id = k.identify(&headers(&[("authorization", "bearer key-of-chat-000000")]), &o);
        assert_eq!(&*id.unwrap().tenant, "chat");
        // A tenant header cannot change who a key says is asking.
        let h = headers(&[("authorization", "Bearer key-of-batch-00000"), ("x-tenant-id", "chat")]);
        assert_eq!(&*k.identify(&h, &o).unwrap().tenant, "batch");
    }

    #[test]
    fn no_key_or_a_wrong_key_is_401_in_openais_shape() {
        let (k, o, _d) = keys("key-of-batch-00000 batch\n");
        for h in [
            headers(&[]),
            headers(&[("authorization", "Bearer key-of-batch-00001")]),
            headers(&[("authorization", "Basic key-of-batch-00000")]),
        ] {
            let e = k.identify(&h, &o).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert_eq!(e.body().error.kind, "authentication_error");
            assert_eq!(e.code, Some("invalid_api_key"));
        }
    }

    #[test]
    fn without_keys_the_tenant_header_is_bounded_and_the_band_checked() {
        let o = FlowOptions::default();
        let k = ApiKeys::load(&o).unwrap();
        let id = k.identify(&headers(&[("x-tenant-id", "acme"), ("x-priority", "2")]), &o);
        assert_eq!(id.unwrap(), Identity { tenant: "acme".into(), priority: 2 });
        assert_eq!(&*k.identify(&headers(&[]), &o).unwrap().tenant, "");
        let long = "t".repeat(MAX_TENANT_BYTES + 1);
        let e = k.identify(&headers(&[("x-tenant-id", &long)]), &o).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("x-tenant-id")));
        for bad in ["4", "-1", "high", "1.5"] {
            let e = k.identify(&headers(&[("x-priority", bad)]), &o).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("x-priority"), "{bad}");
        }
    }

    #[test]
    fn a_bad_file_names_its_line_and_a_failed_reload_keeps_the_keys() {
        let (k, o, d) = keys("key-of-batch-00000 batch\n");
        std::fs::write(d.path().join("keys"), "key-of-batch-00000 batch 9\n").unwrap();
        let e = k.reload().unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("MAX_PRIORITY"), "{e}");
        let h = headers(&[("authorization", "Bearer key-of-batch-00000")]);
        assert!(k.identify(&h, &o).is_ok(), "the old keys still serve");
        std::fs::write(d.path().join("keys"), "short batch\n").unwrap();
        assert!(k.reload().unwrap_err().to_string().contains("16"));
    }
}
