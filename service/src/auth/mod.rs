//! Who may do what.
//!
//! Three modes: `none` (the embedded default, on 127.0.0.1), `basic` (HTTP Basic against an
//! htpasswd file, on every request) and `token` (Docker token auth: Berth issues JWTs at
//! `/token` and checks them on every request, without shared state). In both `basic` and
//! `token`, access rules decide what each user (and anonymous) may do.
//!
//! This module knows credentials, tokens, scopes and rules, and nothing of HTTP beyond the
//! `Authorization` header's syntax: the API layer turns a [`Denial`] into a response.

pub mod htpasswd;
pub mod limiter;
pub mod rules;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::oci::RepoName;
use htpasswd::Htpasswd;
use limiter::Limiter;
use rules::AccessRules;
use token::{AccessEntry, Claims, Tokens};

/// What a request wants to do, in the terms of the Docker token-auth scope grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// The resource a request acts on.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// `GET /v2/`: any authenticated client may ask.
    Base,
    Repository(&'a RepoName, &'a [Action]),
    Catalog,
}

impl Scope<'_> {
    /// The scope as a challenge names it: `repository:a/b:pull,push`.
    fn challenge(&self) -> Option<String> {
        match self {
            Scope::Base => None,
            Scope::Repository(name, actions) => {
                Some(format!("repository:{name}:{}", actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")))
            }
            Scope::Catalog => Some("registry:catalog:*".into()),
        }
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

impl Identity {
    fn subject(&self) -> &str {
        match self {
            Identity::Anonymous => "",
            Identity::User(name) => name,
        }
    }
}

/// What a client presented in its `Authorization` header.
pub enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Credentials {
    /// Parses an `Authorization` header value; `None` for anything else.
    pub fn parse(header: &str) -> Option<Credentials> {
        let (scheme, value) = header.trim().split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            Some(Credentials::Basic { user: user.to_owned(), password: password.to_owned() })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Credentials::Bearer(value.to_owned()))
        } else {
            None
        }
    }
}

/// A request as the authorizer sees it.
pub struct Caller {
    pub credentials: Option<Credentials>,
    /// The client's address, for counting failed logins.
    pub address: String,
    /// `scheme://host` the client used, for the token realm when no external URL is set.
    pub origin: String,
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// No or bad credentials: 401 with this `WWW-Authenticate` challenge.
    #[error("{message}")]
    Unauthenticated { challenge: String, message: String },
    /// Authenticated, but not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A valid token that does not grant the access asked for: 403, with a challenge naming
    /// the scope needed (RFC 6750, section 3.1), so that a client can ask for a token with it.
    #[error("{message}")]
    InsufficientScope { challenge: String, message: String },
    /// Too many failed logins: 429.
    #[error("too many failed logins; try again in {} seconds", .retry_after.as_secs())]
    TooManyAttempts { retry_after: Duration },
    /// A bad request to the token endpoint.
    #[error("{0}")]
    BadRequest(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Basic,
    Token,
}

pub struct Authorizer {
    mode: Mode,
    users: Option<Htpasswd>,
    rules: AccessRules,
    tokens: Option<Arc<Tokens>>,
    limiter: Limiter,
    /// `BERTH_EXTERNAL_URL`: where clients reach Berth, for the token realm.
    external_url: Option<String>,
    service: String,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Authorizer {
    /// The pass-through authorizer: authentication is off.
    pub fn none() -> Authorizer {
        Authorizer {
            mode: Mode::None,
            users: None,
            rules: AccessRules::logged_in_may_do_everything(),
            tokens: None,
            limiter: Limiter::in_memory(u32::MAX, Duration::ZERO),
            external_url: None,
            service: "berth".into(),
        }
    }

    pub fn new(
        mode: Mode,
        users: Option<Htpasswd>,
        rules: AccessRules,
        tokens: Option<Tokens>,
        limiter: Limiter,
        external_url: Option<String>,
        service: String,
    ) -> Authorizer {
        Authorizer {
            mode,
            users,
            rules,
            tokens: tokens.map(Arc::new),
            limiter,
            external_url: external_url.map(|u| u.trim_end_matches('/').to_owned()),
            service,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_deref()
    }

    fn challenge(&self, caller: &Caller, scope: &Scope<'_>, error: Option<&str>) -> String {
        match self.mode {
            Mode::Token => {
                let realm = format!("{}/token", self.external_url.as_deref().unwrap_or(&caller.origin));
                let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
                if let Some(scope) = scope.challenge() {
                    challenge.push_str(&format!(",scope=\"{scope}\""));
                }
                if let Some(error) = error {
                    challenge.push_str(&format!(",error=\"{error}\""));
                }
                challenge
            }
            _ => format!("Basic realm=\"{}\"", self.service),
        }
    }

    fn unauthenticated(&self, caller: &Caller, scope: &Scope<'_>, error: Option<&str>, message: &str) -> Denial {
        Denial::Unauthenticated { challenge: self.challenge(caller, scope, error), message: message.to_owned() }
    }

    /// Whether `caller` may act on `scope`; who they are if so.
    pub async fn check(&self, caller: &Caller, scope: Scope<'_>) -> Result<Identity, Denial> {
        let outcome = match self.mode {
            Mode::None => return Ok(Identity::Anonymous),
            Mode::Basic => self.check_basic(caller, scope).await,
            Mode::Token => self.check_token(caller, scope),
        };
        self.count(match &outcome {
            Ok(Identity::Anonymous) => "allowed_anonymous",
            Ok(Identity::User(_)) => "allowed",
            Err(Denial::Unauthenticated { challenge, .. }) if challenge.contains("invalid_token") => "invalid_token",
            Err(Denial::Unauthenticated { .. }) => "unauthenticated",
            Err(Denial::InsufficientScope { .. }) => "insufficient_scope",
            Err(Denial::Forbidden(_)) => "forbidden",
            Err(Denial::TooManyAttempts { .. }) => "rate_limited",
            Err(Denial::BadRequest(_)) => "bad_request",
        });
        outcome
    }

    /// Counts an outcome in the `berth_auth_total` metric.
    fn count(&self, outcome: &str) {
        let mode = match self.mode {
            Mode::None => "none",
            Mode::Basic => "basic",
            Mode::Token => "token",
        };
        crate::metrics::Metrics::get().auth.with_label_values(&[mode, outcome]).inc();
    }

    async fn check_basic(&self, caller: &Caller, scope: Scope<'_>) -> Result<Identity, Denial> {
        let who = match &caller.credentials {
            Some(Credentials::Basic { user, password }) => self.login(user, password, &caller.address).await?,
            _ if !matches!(scope, Scope::Base) && self.rules_allow(&Identity::Anonymous, &scope) => {
                return Ok(Identity::Anonymous);
            }
            _ => return Err(self.unauthenticated(caller, &scope, None, "authentication required")),
        };
        if self.rules_allow(&who, &scope) {
            Ok(who)
        } else {
            Err(Denial::Forbidden(format!("{} may not do this", who.subject())))
        }
    }

    fn check_token(&self, caller: &Caller, scope: Scope<'_>) -> Result<Identity, Denial> {
        let (Some(Credentials::Bearer(token)), Some(tokens)) = (&caller.credentials, &self.tokens) else {
            return Err(self.unauthenticated(caller, &scope, None, "authentication required"));
        };
        let claims = tokens.verify(token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            self.unauthenticated(caller, &scope, Some("invalid_token"), "invalid or expired token")
        })?;
        if !covers(&claims, &scope) {
            return Err(Denial::InsufficientScope {
                challenge: self.challenge(caller, &scope, Some("insufficient_scope")),
                message: "the token does not grant this access".into(),
            });
        }
        Ok(if claims.sub.is_empty() { Identity::Anonymous } else { Identity::User(claims.sub) })
    }

    fn rules_allow(&self, who: &Identity, scope: &Scope<'_>) -> bool {
        match scope {
            Scope::Base => !matches!(who, Identity::Anonymous),
            Scope::Repository(name, actions) => {
                let allowed = self.rules.allowed(who, name);
                actions.iter().all(|a| allowed.contains(a))
            }
            Scope::Catalog => self.rules.catalog(who),
        }
    }

    /// Checks a user's password, refusing users and addresses with too many failed logins.
    pub async fn login(&self, user: &str, password: &str, address: &str) -> Result<Identity, Denial> {
        let keys = [format!("user:{user}"), format!("addr:{address}")];
        if let Some(retry_after) = self.limiter.blocked(&keys).await {
            self.count("login_rate_limited");
            return Err(Denial::TooManyAttempts { retry_after });
        }
        let Some(users) = &self.users else {
            return Err(Denial::Unauthenticated {
                challenge: format!("Basic realm=\"{}\"", self.service),
                message: "no users are configured".into(),
            });
        };
        if users.verify(user, password).await {
            self.count("login_succeeded");
            self.limiter.succeeded(&keys[0]).await;
            Ok(Identity::User(user.to_owned()))
        } else {
            self.count("login_failed");
            self.limiter.failed(&keys).await;
            tracing::info!(user, address, "failed login");
            Err(Denial::Unauthenticated {
                challenge: format!("Basic realm=\"{}\"", self.service),
                message: "invalid user name or password".into(),
            })
        }
    }

    /// Whether the user a refresh token names still exists.
    pub fn user_exists(&self, user: &str) -> bool {
        self.users.as_ref().is_some_and(|u| u.knows(user))
    }

    /// What a token for `who` asking for `requested` (scope strings) grants: the intersection
    /// of what was asked and what the rules allow. Scopes that do not parse, or name an
    /// invalid repository, grant nothing.
    pub fn grant(&self, who: &Identity, requested: &[String]) -> Vec<AccessEntry> {
        let mut granted: Vec<AccessEntry> = Vec::new();
        for scope in requested.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            let Some(entry) = self.grant_one(who, scope) else { continue };
            match granted.iter_mut().find(|e| e.kind == entry.kind && e.name == entry.name) {
                Some(existing) => {
                    for action in entry.actions {
                        if !existing.actions.contains(&action) {
                            existing.actions.push(action);
                        }
                    }
                }
                None => granted.push(entry),
            }
        }
        granted
    }

    fn grant_one(&self, who: &Identity, scope: &str) -> Option<AccessEntry> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
        match kind {
            "repository" => {
                let repository: RepoName = name.parse().ok()?;
                let allowed = self.rules.allowed(who, &repository);
                let wanted: Vec<Action> = if actions == "*" {
                    vec![Action::Pull, Action::Push, Action::Delete]
                } else {
                    actions.split(',').filter_map(Action::parse).collect()
                };
                let actions: Vec<String> =
                    wanted.into_iter().filter(|a| allowed.contains(a)).map(|a| a.as_str().to_owned()).collect();
                (!actions.is_empty()).then(|| AccessEntry {
                    kind: "repository".into(),
                    name: repository.to_string(),
                    actions,
                })
            }
            "registry" if name == "catalog" && actions.split(',').any(|a| a == "*") && self.rules.catalog(who) => {
                Some(AccessEntry { kind: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] })
            }
            _ => None,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }
}

/// Whether a token's `access` claim covers what the request needs.
fn covers(claims: &Claims, scope: &Scope<'_>) -> bool {
    let entry = |kind: &str, name: &str| {
        claims.access.iter().find(|e| e.kind.split('(').next() == Some(kind) && e.name == name)
    };
    match scope {
        Scope::Base => true,
        Scope::Repository(name, actions) => entry("repository", name.as_str())
            .is_some_and(|e| actions.iter().all(|a| e.actions.iter().any(|x| x == a.as_str()))),
        Scope::Catalog => entry("registry", "catalog").is_some_and(|e| e.actions.iter().any(|x| x == "*")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(rules: &str) -> Authorizer {
        Authorizer::new(
            Mode::Token,
            None,
            AccessRules::parse(rules).expect("rules"),
            None,
            Limiter::in_memory(5, Duration::from_secs(60)),
            Some("https://registry.example.com/".into()),
            "registry.example.com".into(),
        )
    }

    const RULES: &str = "[[rules]]\nusers = [\"alice\"]\nrepositories = [\"a/**\"]\nactions = [\"pull\"]\n\
                         [[rules]]\nusers = [\"anonymous\"]\nrepositories = [\"public\"]\nactions = [\"pull\"]\n";

    #[test]
    fn a_grant_is_the_intersection_of_the_ask_and_the_rules() {
        let auth = authorizer(RULES);
        let alice = Identity::User("alice".into());
        let granted = auth.grant(&alice, &["repository:a/b:pull,push repository:other:pull".into()]);
        assert_eq!(
            granted,
            [AccessEntry { kind: "repository".into(), name: "a/b".into(), actions: vec!["pull".into()] }]
        );
        assert!(auth.grant(&alice, &["registry:catalog:*".into()]).is_empty());
        for tricky in
            ["repository:a/../b:pull", "repository:A/b:pull", "repository:a/b", "nonsense", "repository::pull"]
        {
            assert!(auth.grant(&alice, &[tricky.into()]).is_empty(), "{tricky}");
        }
        assert_eq!(auth.grant(&Identity::Anonymous, &["repository:public:pull,push".into()]).len(), 1);
    }

    #[test]
    fn challenges_name_realm_service_and_scope() {
        let auth = authorizer(RULES);
        let caller = Caller { credentials: None, address: "1.2.3.4".into(), origin: "http://ignored".into() };
        let name: RepoName = "a/b".parse().expect("name");
        let scope = Scope::Repository(&name, &[Action::Pull, Action::Push]);
        assert_eq!(
            auth.challenge(&caller, &scope, Some("insufficient_scope")),
            "Bearer realm=\"https://registry.example.com/token\",service=\"registry.example.com\",\
             scope=\"repository:a/b:pull,push\",error=\"insufficient_scope\""
        );
    }

    #[test]
    fn authorization_headers_parse() {
        assert!(
            matches!(Credentials::parse("Basic YWxpY2U6czNjcjp0"), Some(Credentials::Basic { user, password }) if user == "alice" && password == "s3cr:t")
        );
        assert!(matches!(Credentials::parse("bearer abc.def.ghi"), Some(Credentials::Bearer(t)) if t == "abc.def.ghi"));
        assert!(Credentials::parse("Basic !!!").is_none());
        assert!(Credentials::parse("Digest x").is_none());
    }
}
