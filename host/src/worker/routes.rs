//! A worker's HTTP routes: which handler answers which path, and the admin token and body
//! limits in front of them.

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};

use super::state::Worker;
use super::{admin, handlers, info, kv_events, kv_transfer, load};
use crate::api::Endpoint;
use crate::http::{Access, AdminAuth, require_admin};
use crate::serve::limit_bodies;

impl Worker {
    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let limits = &self.options.limits;
        let auth = |access| AdminAuth { token: self.options.admin_token.clone(), access };
        let api = Router::new()
            .route(Endpoint::Generate.path(), post(handlers::generate))
            .route(Endpoint::Completions.path(), post(handlers::completions))
            .route(Endpoint::Chat.path(), post(handlers::chat))
            .route("/v1/models", get(info::models))
            .route("/health", get(info::health))
            .route("/server_info", get(info::server_info))
            .route("/get_server_info", get(info::server_info))
            .route("/model_info", get(info::model_info))
            .route("/get_model_info", get(info::model_info))
            .route("/metrics", get(info::metrics))
            .route("/load", get(load::load))
            .route("/kv/export", post(kv_transfer::export))
            // Behind the cluster token or the admin token: it checks which itself.
            .route("/kv_events", get(kv_events::kv_events));
        let open_admin = Router::new()
            .route("/flush_cache", post(admin::flush_cache))
            .route("/admin/cache-policy", get(admin::cache_policy_info))
            .route("/admin/audit", get(admin::audit))
            .layer(from_fn_with_state(auth(Access::OpenWithoutToken), require_admin));
        // The token is checked before the body is read: an upload may be tens of MB.
        let upload = limit_bodies(
            Router::new().route("/admin/cache-policy", put(admin::swap_cache_policy)),
            limits,
            self.options.max_upload_bytes,
        )
        .layer(from_fn_with_state(auth(Access::TokenRequired), require_admin));
        limit_bodies(api.merge(open_admin), limits, limits.max_body_bytes)
            .merge(upload)
            .fallback(crate::http::not_found)
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .with_state(self.clone())
    }
}
