//! `/healthz` and `/readyz`, for orchestrators and load balancers.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::State;

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// `GET /readyz`: the database, the session store and the blob store answer; otherwise 503
/// naming the ones that do not, so that a load balancer routes around this replica.
pub async fn ready(state: State) -> HttpResponse {
    let checks = state.registry.readiness().await;
    let ready = checks.iter().all(|c| c.error.is_none());
    let components: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|c| {
            let status = match &c.error {
                None => json!({"backend": c.backend, "status": "ok"}),
                Some(e) => json!({"backend": c.backend, "status": "unavailable", "error": e}),
            };
            (c.component.to_owned(), status)
        })
        .collect();
    let body = json!({"status": if ready { "ready" } else { "unavailable" }, "components": components});
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(alive)).route("/readyz", web::get().to(ready));
}
