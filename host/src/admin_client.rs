//! The one client of the admin APIs, used by `locus swap` and `locus bench`.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::api::ErrorBody;
use crate::api::admin::{AuditAnswer, TrialAnswer};
use crate::http::{ACTOR_HEADER, REASON_HEADER};
use locus_policy::{AuditEntry, PolicySource, TrialReport};

/// Talks to a router's admin listener and to workers' admin endpoints.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    token: Option<String>,
    /// Who asks and why, sent for the audit log.
    actor: Option<(String, String)>,
}

/// A worker in a router's `GET /admin/workers`.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerEntry {
    /// Its base URL.
    pub url: String,
    /// Whether its checks pass.
    pub healthy: bool,
}

#[derive(Deserialize)]
struct WorkerList {
    workers: Vec<WorkerEntry>,
}

impl AdminClient {
    /// A client sending `token` as `Authorization: Bearer` when there is one.
    pub fn new(token: Option<String>) -> Self {
        Self { http: reqwest::Client::new(), token, actor: None }
    }

    /// Names who asks for the changes this client makes, and why (audit log headers).
    pub fn with_actor(mut self, who: String, why: String) -> Self {
        self.actor = Some((who, why));
        self
    }

    fn auth(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some((who, why)) = &self.actor {
            // Header values cannot hold control characters; a reason may be typed with any.
            let clean = |s: &str| {
                s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>()
            };
            for (name, value) in [(ACTOR_HEADER, clean(who)), (REASON_HEADER, clean(why))] {
                if let Ok(v) = reqwest::header::HeaderValue::from_bytes(value.as_bytes()) {
                    req = req.header(name, v);
                }
            }
        }
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = self.auth(req).send().await.with_context(|| what.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| what.to_string())?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => bail!("{what}: {status}: {}", e.error.message),
            Err(_) => bail!("{what}: {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    /// Swaps the routing policy of the router whose admin listener is `admin`.
    pub async fn swap_router_policy(
        &self,
        admin: &str,
        policy: &str,
        settings: &[(String, String)],
    ) -> anyhow::Result<Value> {
        self.swap(&format!("{}/admin/policy", admin.trim_end_matches('/')), policy, settings).await
    }

    /// Swaps the cache policy of the worker at `worker`.
    pub async fn swap_cache_policy(
        &self,
        worker: &str,
        policy: &str,
        settings: &[(String, String)],
    ) -> anyhow::Result<Value> {
        self.swap(&format!("{}/admin/cache-policy", worker.trim_end_matches('/')), policy, settings)
            .await
    }

    /// A built-in goes by name; a file is uploaded as the body.
    async fn swap(
        &self,
        url: &str,
        policy: &str,
        settings: &[(String, String)],
    ) -> anyhow::Result<Value> {
        let source = PolicySource::parse(policy)?;
        let mut query = settings.to_vec();
        let body = match &source {
            PolicySource::File(p) => {
                query.push(("name".into(), p.display().to_string()));
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
            }
            other => {
                query.push(("name".into(), other.name()));
                Vec::new()
            }
        };
        self.send(self.http.put(url).query(&query).body(body), &format!("PUT {url}")).await
    }

    /// Ends the trial on the router at `admin`: `promote` or `abort`.
    pub async fn end_trial(&self, admin: &str, how: &str) -> anyhow::Result<Value> {
        let url = format!("{}/admin/policy/{how}", admin.trim_end_matches('/'));
        self.send(self.http.post(&url), &format!("POST {url}")).await
    }

    /// `GET {admin}{path}` of a router's admin API, as JSON.
    pub async fn get(&self, admin: &str, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", admin.trim_end_matches('/'));
        self.send(self.http.get(&url), &format!("GET {url}")).await
    }

    /// The running trial of the router at `admin`, else its last one.
    pub async fn trial(&self, admin: &str) -> anyhow::Result<Option<TrialReport>> {
        let v = self.get(admin, "/admin/policy/trial").await?;
        Ok(serde_json::from_value::<TrialAnswer>(v).context("reading the trial report")?.trial)
    }

    /// The audit log kept by the router (or worker) at `admin`, oldest first.
    pub async fn audit(&self, admin: &str) -> anyhow::Result<Vec<AuditEntry>> {
        let v = self.get(admin, "/admin/audit").await?;
        Ok(serde_json::from_value::<AuditAnswer>(v).context("reading the audit log")?.entries)
    }

    /// The workers of the router whose admin listener is `admin`.
    pub async fn workers(&self, admin: &str) -> anyhow::Result<Vec<WorkerEntry>> {
        let url = format!("{}/admin/workers", admin.trim_end_matches('/'));
        let v = self.send(self.http.get(&url), &format!("GET {url}")).await?;
        Ok(serde_json::from_value::<WorkerList>(v)?.workers)
    }

    /// Empties both caches of the worker at `worker`.
    pub async fn flush(&self, worker: &str) -> anyhow::Result<()> {
        let url = format!("{}/flush_cache", worker.trim_end_matches('/'));
        self.send(self.http.post(&url), &format!("POST {url}")).await.map(|_| ())
    }
}
