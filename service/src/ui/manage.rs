//! What changes something: signing in and out, and deleting a tag or a manifest; and the
//! storage usage page. Every POST here must come from a page of this registry (`Origin`, or
//! `Referer` when a browser sends no `Origin`) and, but for the sign-in form, carry the CSRF
//! token of the visitor's session: a forged form from another site has neither.

use std::collections::HashMap;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::session::COOKIE;
use super::{State, Visitor, html, may, may_delete, may_pull, nav, page_error_for, pages, sees_usage, visitor};
use crate::api::AppState;
use crate::auth::{Action, Denial, Identity, Mode};
use crate::metadata::NameMatch;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::registry::Error;

/// The value of cookie `name` in the request.
pub(super) fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// The `Set-Cookie` value for a session: scoped to the UI, out of scripts' reach, never sent
/// along with a request another site starts, and over https only when Berth is reached so.
fn session_cookie(state: &AppState, req: &HttpRequest, value: &str, max_age: u64) -> String {
    let secure = if origins(state, req).iter().any(|o| o.starts_with("https://")) { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Where pages of this registry come from: the request's own origin, and the external URL's.
fn origins(state: &AppState, req: &HttpRequest) -> Vec<String> {
    let mut origins = vec![state.proxies.origin(req).origin];
    if let Some(url) = &state.external_url {
        let url = url.trim_end_matches('/');
        // `scheme://host[:port]`, without a path.
        let end = url.find("://").map_or(url.len(), |i| url[i + 3..].find('/').map_or(url.len(), |j| i + 3 + j));
        origins.push(url[..end].to_owned());
    }
    origins
}

/// Whether a POST comes from a page of this registry.
fn same_origin(state: &AppState, req: &HttpRequest) -> bool {
    let sent = match req.headers().get(header::ORIGIN) {
        Some(origin) => origin.to_str().ok().map(str::to_owned),
        None => req.headers().get(header::REFERER).and_then(|r| r.to_str().ok()).map(|r| {
            let end = r.find("://").and_then(|i| r[i + 3..].find('/').map(|j| i + 3 + j)).unwrap_or(r.len());
            r[..end].to_owned()
        }),
    };
    sent.is_some_and(|sent| origins(state, req).iter().any(|o| o.eq_ignore_ascii_case(&sent)))
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn see_other(location: &str) -> actix_web::HttpResponseBuilder {
    let mut r = HttpResponse::SeeOther();
    r.insert_header((header::LOCATION, location.to_owned()));
    r
}

fn refused(nav: &pages::Nav, status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pages::error(nav, status.as_u16(), message).into_string())
}

const FORGED: &str = "This form was not sent from a page of this registry, or its page is too old: go back, \
     reload the page and try again.";

/// Where to go after signing in: a page of the UI, never another site.
fn next_page(next: Option<&String>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/ui/",
    }
}

/// `GET /ui/login?next=…`
pub(super) async fn login_form(state: State, req: HttpRequest) -> HttpResponse {
    if state.auth.mode() == Mode::None {
        return see_other("/ui/").finish();
    }
    let next = super::query_value(&req, "next");
    let nav = nav(&state, &visitor(&state, &req));
    html(pages::login(&nav, next_page(next.as_ref()), None))
}

/// `POST /ui/login`: the htpasswd users, through the limiter the token endpoint uses.
pub(super) async fn login(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let nav = pages::Nav { sign_in: true, ..Default::default() };
    if state.auth.mode() == Mode::None {
        return see_other("/ui/").finish();
    }
    if !same_origin(&state, &req) {
        return refused(&nav, StatusCode::FORBIDDEN, FORGED);
    }
    let fields = form(&body);
    let next = next_page(fields.get("next"));
    let (user, password) = (fields.get("user").map_or("", |u| u.trim()), fields.get("password").map_or("", |p| p));
    let address = state.proxies.origin(&req).address;
    let (status, message, retry) = match state.auth.login(user, password, &address).await {
        Ok(Identity::User(user)) => {
            // A new session, with a new nonce and so a new CSRF token, at every sign-in.
            let (_, value) = state.ui_sessions.issue(&user);
            let cookie = session_cookie(&state, &req, &value, state.ui_sessions.ttl().as_secs());
            return see_other(next).insert_header((header::SET_COOKIE, cookie)).finish();
        }
        Ok(Identity::Anonymous) => (StatusCode::UNAUTHORIZED, "Invalid user name or password.".to_owned(), None),
        Err(Denial::TooManyAttempts { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed sign-ins; try again in {} seconds.", retry_after.as_secs().max(1)),
            Some(retry_after.as_secs().max(1)),
        ),
        Err(Denial::Unauthenticated { message, .. }) if message.contains("no users") => {
            (StatusCode::UNAUTHORIZED, "No users are configured on this registry.".to_owned(), None)
        }
        Err(_) => (StatusCode::UNAUTHORIZED, "Invalid user name or password.".to_owned(), None),
    };
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8").insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(seconds) = retry {
        r.insert_header((header::RETRY_AFTER, seconds.to_string()));
    }
    r.body(pages::login(&nav, next, Some(&message)).into_string())
}

/// `POST /ui/logout`
pub(super) async fn logout(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let visitor = visitor(&state, &req);
    let nav = nav(&state, &visitor);
    if !form_holds(&state, &req, &visitor, &form(&body)) {
        return refused(&nav, StatusCode::FORBIDDEN, FORGED);
    }
    see_other("/ui/").insert_header((header::SET_COOKIE, session_cookie(&state, &req, "", 0))).finish()
}

/// Whether a POST comes from this registry's page and carries the visitor's CSRF token.
fn form_holds(state: &AppState, req: &HttpRequest, visitor: &Visitor, fields: &HashMap<String, String>) -> bool {
    let token = fields.get("csrf").map_or("", String::as_str);
    same_origin(state, req) && visitor.session.as_ref().is_some_and(|s| state.ui_sessions.csrf_holds(s, token))
}

/// What a delete form names: a tag, or a manifest by digest.
fn target(fields: &HashMap<String, String>) -> Result<Reference, Error> {
    match (fields.get("tag"), fields.get("digest")) {
        (Some(tag), None) => Ok(Reference::Tag(tag.parse::<Tag>().map_err(|_| Error::ManifestUnknown)?)),
        (None, Some(digest)) => Ok(Reference::Digest(digest.parse::<Digest>().map_err(|_| Error::ManifestUnknown)?)),
        _ => Err(Error::ManifestUnknown),
    }
}

/// `GET /ui/r/<name>/-/delete?tag=…` or `?digest=…`: what would go, and a form to confirm.
pub(super) async fn confirm_delete(
    state: &AppState,
    req: &HttpRequest,
    mut visitor: Visitor,
    repository: &RepoName,
) -> Result<HttpResponse, Error> {
    let fields: HashMap<String, String> = form(req.query_string().as_bytes());
    let reference = target(&fields)?;
    let stored = state.registry.inspect_manifest(repository, &reference).await?;
    if !may_delete(state, &visitor.who, repository) {
        return Ok(refused(&nav(state, &visitor), StatusCode::FORBIDDEN, &no_delete(state, &visitor)));
    }
    let tags = match &reference {
        Reference::Tag(tag) => vec![tag.clone()],
        Reference::Digest(digest) => state.registry.tags_of(repository, digest).await?,
    };
    let rules = state.registry.lifecycle();
    let fixed: Vec<String> = tags
        .iter()
        .filter_map(|t| rules.forbids_delete(repository.as_str(), t.as_str()).map(|r| format!("{t}: {}", r.describe())))
        .collect();
    // The form's CSRF token needs a session: an anonymous visitor allowed to delete gets one.
    let mut new_cookie = None;
    if visitor.session.is_none() {
        let (session, value) = state.ui_sessions.issue("");
        new_cookie = Some(session_cookie(state, req, &value, state.ui_sessions.ttl().as_secs()));
        visitor.session = Some(session);
    }
    let nav = nav(state, &visitor);
    let page = pages::confirm_delete(
        &nav,
        &pages::DeleteView { repository, reference: &reference, digest: &stored.digest, tags: &tags, fixed: &fixed },
    );
    let mut response = html(page);
    if let Some(cookie) = new_cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie.parse().map_err(|_| Error::ManifestUnknown)?);
    }
    Ok(response)
}

fn no_delete(state: &AppState, visitor: &Visitor) -> String {
    if !state.registry.policy().delete_enabled {
        "Deletes are disabled on this registry (BERTH_DELETE=false).".to_owned()
    } else if visitor.user().is_none() && state.auth.mode() != Mode::None {
        "Sign in as a user who may delete in this repository.".to_owned()
    } else {
        "You may not delete in this repository.".to_owned()
    }
}

/// `POST /ui/r/<name>/-/delete` with `csrf` and `tag` or `digest`.
pub(super) async fn repository_post(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let visitor = visitor(&state, &req);
    let nav = nav(&state, &visitor);
    let Some(name) = path.strip_suffix("/-/delete") else {
        return page_error_for(&nav, &Error::NameUnknown);
    };
    let Ok(repository) = name.parse::<RepoName>() else {
        return page_error_for(&nav, &Error::NameUnknown);
    };
    let fields = form(&body);
    if !form_holds(&state, &req, &visitor, &fields) {
        return refused(&nav, StatusCode::FORBIDDEN, FORGED);
    }
    if !may(&state, &visitor.who, &repository, Action::Pull) {
        return page_error_for(&nav, &Error::NameUnknown);
    }
    if !may_delete(&state, &visitor.who, &repository) {
        return refused(&nav, StatusCode::FORBIDDEN, &no_delete(&state, &visitor));
    }
    let reference = match target(&fields) {
        Ok(r) => r,
        Err(e) => return page_error_for(&nav, &e),
    };
    match state.registry.delete_manifest(&repository, &reference).await {
        Ok(()) => {
            tracing::info!(repository = %repository, reference = %reference, user = visitor.user(), "deleted from the web UI");
            see_other(&format!("/ui/r/{repository}")).finish()
        }
        Err(e) => page_error_for(&nav, &e),
    }
}

/// `GET /ui/usage?ns=…`: quotas, and what a namespace and its repositories hold. A total
/// (of a namespace or a quota) shows only to a visitor who may pull every repository in it.
pub(super) async fn usage(state: State, req: HttpRequest) -> HttpResponse {
    let visitor = visitor(&state, &req);
    let nav = nav(&state, &visitor);
    if !sees_usage(&state, &visitor.who) {
        return see_other("/ui/login?next=/ui/usage").finish();
    }
    let namespace = super::query_value(&req, "ns").map(|n| n.trim().trim_matches('/').to_ascii_lowercase());
    match usage_page(&state, &visitor, namespace.as_deref()).await {
        Ok(page) => html(pages::usage(&nav, &page)),
        Err(e) => page_error_for(&nav, &e),
    }
}

async fn usage_page(state: &AppState, visitor: &Visitor, namespace: Option<&str>) -> Result<pages::UsageView, Error> {
    let visible = |name: &str| may_pull(state, &visitor.who, name);
    let mut quotas = Vec::new();
    for quota in state.registry.usage().await? {
        if state.registry.namespace_visible(&quota.namespace, visible).await? {
            quotas.push(quota);
        }
    }
    let mut view = pages::UsageView { quotas, namespace: None };
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        let total = if state.registry.namespace_visible(ns, visible).await? {
            Some(state.registry.namespace_size(ns).await?)
        } else {
            None
        };
        let under = format!("{ns}/");
        let page = state.registry.browse_repositories(NameMatch::Prefix(&under), None, 50, visible).await?;
        view.namespace = Some(pages::NamespaceUsage {
            name: ns.to_owned(),
            total,
            repositories: page.repositories,
            more: page.next.is_some(),
        });
    }
    Ok(view)
}
