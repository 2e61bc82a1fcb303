//! The token endpoint (Docker token auth): `GET /token` with Basic credentials, `POST /token`
//! with the OAuth2 `password` and `refresh_token` grants, and the public keys as a JWKS.

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::{State, caller, headers as h};
use crate::auth::token::Issued;
use crate::auth::{Credentials, Denial, Identity, Mode};

/// Largest form a POST to the token endpoint may send.
const FORM_LIMIT: usize = 16 << 10;

fn tokens_enabled(state: &State) -> ApiResult<&crate::auth::token::Tokens> {
    match (state.auth.mode(), state.auth.tokens()) {
        (Mode::Token, Some(tokens)) => Ok(tokens),
        _ => Err(ApiError::NotFound("token authentication is not enabled".into())),
    }
}

fn check_service(state: &State, service: Option<&str>) -> ApiResult<()> {
    match service {
        Some(s) if !s.is_empty() && s != state.auth.service() => {
            Err(Denial::BadRequest(format!("unknown service {s:?}; this is {:?}", state.auth.service())).into())
        }
        _ => Ok(()),
    }
}

fn issued_json(issued: &Issued) -> serde_json::Value {
    json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    })
}

/// `GET /token?service=…&scope=…[&offline_token=true]`
///
/// "The token server should first attempt to authenticate the client using any
/// authentication credentials provided with the request … it will take the intersection of
/// the set of requested actions on each resource and the set of actions that the client has
/// in fact been granted."
pub async fn get(state: State, req: HttpRequest) -> ApiResult<HttpResponse> {
    let tokens = tokens_enabled(&state)?;
    let query = h::query_pairs(&req);
    check_service(&state, h::query_value(&query, "service"))?;
    let caller = caller(&state, &req);
    let who = match &caller.credentials {
        Some(Credentials::Basic { user, password }) => state.auth.login(user, password, &caller.address).await?,
        _ => Identity::Anonymous,
    };
    let scopes: Vec<String> = query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let access = state.auth.grant(&who, &scopes);
    let issued = tokens.issue(subject(&who), access).map_err(internal)?;
    let mut body = issued_json(&issued);
    if h::query_value(&query, "offline_token") == Some("true")
        && let Identity::User(user) = &who
    {
        body["refresh_token"] = json!(tokens.issue_refresh(user).map_err(internal)?.token);
    }
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(body))
}

/// `POST /token` (OAuth2): `grant_type=password` with `username` and `password`, or
/// `grant_type=refresh_token` with `refresh_token`; `scope` space-separated.
pub async fn post(state: State, req: HttpRequest, body: Bytes) -> ApiResult<HttpResponse> {
    let tokens = tokens_enabled(&state)?;
    if body.len() > FORM_LIMIT {
        return Err(Denial::BadRequest("form too large".into()).into());
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| h::query_value(&form, name);
    check_service(&state, field("service"))?;
    let caller = caller(&state, &req);
    let who = match field("grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (field("username"), field("password")) else {
                return Err(Denial::BadRequest("the password grant needs username and password".into()).into());
            };
            state.auth.login(user, password, &caller.address).await?
        }
        Some("refresh_token") => {
            let token = field("refresh_token")
                .ok_or_else(|| Denial::BadRequest("the refresh_token grant needs refresh_token".into()))?;
            let user = tokens.verify_refresh(token).map_err(|_| invalid_refresh(&state))?;
            if !state.auth.user_exists(&user) {
                return Err(invalid_refresh(&state).into());
            }
            Identity::User(user)
        }
        other => return Err(Denial::BadRequest(format!("unsupported grant_type {other:?}")).into()),
    };
    let scopes: Vec<String> = field("scope").map(|s| vec![s.to_owned()]).unwrap_or_default();
    let access = state.auth.grant(&who, &scopes);
    let granted =
        access.iter().map(|e| format!("{}:{}:{}", e.kind, e.name, e.actions.join(","))).collect::<Vec<_>>().join(" ");
    let issued = tokens.issue(subject(&who), access).map_err(internal)?;
    let mut body = issued_json(&issued);
    body["scope"] = json!(granted);
    if let Identity::User(user) = &who {
        let wants_refresh = field("access_type") == Some("offline") || field("grant_type") == Some("refresh_token");
        if wants_refresh {
            let refresh = match field("refresh_token") {
                Some(existing) => existing.to_owned(),
                None => tokens.issue_refresh(user).map_err(internal)?.token,
            };
            body["refresh_token"] = json!(refresh);
        }
    }
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(body))
}

/// `GET /token/jwks.json`: the public keys tokens are signed with.
pub async fn jwks(state: State) -> ApiResult<HttpResponse> {
    let tokens = tokens_enabled(&state)?;
    Ok(HttpResponse::Ok().json(tokens.jwks()))
}

fn subject(who: &Identity) -> &str {
    match who {
        Identity::Anonymous => "",
        Identity::User(name) => name,
    }
}

fn invalid_refresh(state: &State) -> Denial {
    Denial::Unauthenticated {
        challenge: format!("Basic realm=\"{}\"", state.auth.service()),
        message: "invalid refresh token".into(),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    crate::registry::Error::Internal(e.to_string()).into()
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/token", web::get().to(get))
        .route("/token", web::post().to(post))
        .route("/token/jwks.json", web::get().to(jwks));
}
