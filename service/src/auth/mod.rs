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
    /// A valid token that does not grant the access asked for, with a challenge naming the
    /// scope needed and `error="insufficient_scope"`: 401 the first time, as distribution
    /// answers, so that a client asks for a token with that scope and tries again (crane, the
    /// conformance suites, containerd, oras-go); 403, as RFC 6750 has it, when the same token
    /// comes back for the same scope (oras-py sends it again after a 401, and asks for a new
    /// token only after a 403).
    #[error("{message}")]
    InsufficientScope { challenge: String, message: String, again: bool },
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

/// What the authorizer counts, for a time, per key.
pub struct Limits {
    /// Failed logins, per user and per address.
    pub logins: Limiter,
    /// Tokens already answered 401 for lacking a scope, with the scope: the same token sent
    /// again for it gets 403.
    pub refused_scopes: Limiter,
}

impl Limits {
    /// Counts kept in this process only.
    pub fn in_memory(login_max_failures: u32, window: Duration, token_ttl: Duration) -> Limits {
        Limits {
            logins: Limiter::in_memory(login_max_failures, window),
            refused_scopes: Limiter::in_memory(1, token_ttl),
        }
    }
}

pub struct Authorizer {
    mode: Mode,
    users: Option<Htpasswd>,
    rules: AccessRules,
    tokens: Option<Arc<Tokens>>,
    limits: Limits,
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
            limits: Limits::in_memory(u32::MAX, Duration::ZERO, Duration::ZERO),
            external_url: None,
            service: "berth".into(),
        }
    }

    pub fn new(
        mode: Mode,
        users: Option<Htpasswd>,
        rules: AccessRules,
        tokens: Option<Tokens>,
        limits: Limits,
        external_url: Option<String>,
        service: String,
    ) -> Authorizer {
        Authorizer {
            mode,
            users,
            rules,
            tokens: tokens.map(Arc::new),
            limits,
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
        self.challenge_for(caller, scope.challenge().as_deref(), error)
    }

    /// The `WWW-Authenticate` challenge naming `scope` (scopes separated by spaces, as one
    /// `scope` parameter carries several).
    fn challenge_for(&self, caller: &Caller, scope: Option<&str>, error: Option<&str>) -> String {
        match self.mode {
            Mode::Token => {
                let realm = format!("{}/token", self.external_url.as_deref().unwrap_or(&caller.origin));
                let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
                if let Some(scope) = scope {
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
            Mode::Token => self.check_token(caller, scope).await,
        };
        self.count_outcome(outcome.as_ref().map(|who| *who == Identity::Anonymous));
        outcome
    }

    /// Whether `caller` may mount a blob of `from` into `to`. Pushing to `to` is required (a
    /// refusal is a [`Denial`]); `Ok(false)` when `from` may not be read, and the mount becomes
    /// an ordinary upload, as the spec has it for a blob that cannot be mounted.
    ///
    /// In token mode, a token that says nothing of `from` gets a challenge naming both
    /// repositories, so that the client asks for a token with both and tries again; a token
    /// whose `from` entry lacks `pull` was asked for it and refused.
    pub async fn check_mount(&self, caller: &Caller, to: &RepoName, from: &RepoName) -> Result<bool, Denial> {
        const PUSH: &[Action] = &[Action::Pull, Action::Push];
        const PULL: &[Action] = &[Action::Pull];
        match self.mode {
            Mode::None => Ok(true),
            Mode::Basic => {
                let who = self.check(caller, Scope::Repository(to, PUSH)).await?;
                Ok(self.rules_allow(&who, &Scope::Repository(from, PULL)))
            }
            Mode::Token => {
                let (to_scope, from_scope) = (Scope::Repository(to, PUSH), Scope::Repository(from, PULL));
                let both = format!(
                    "{} {}",
                    to_scope.challenge().unwrap_or_default(),
                    from_scope.challenge().unwrap_or_default()
                );
                let outcome = match self.verified_claims(caller, Some(&both)) {
                    Err(denial) => Err(denial),
                    Ok(claims) => {
                        let asked_for_from =
                            claims.access.iter().any(|e| e.kind == "repository" && e.name == from.as_str());
                        match (covers(&claims, &to_scope), covers(&claims, &from_scope)) {
                            (true, true) => Ok(true),
                            (true, false) if asked_for_from => Ok(false),
                            _ => Err(self.insufficient_scope(caller, &claims, &both).await),
                        }
                    }
                };
                self.count_outcome(outcome.as_ref().map(|_| false));
                outcome
            }
        }
    }

    /// A valid token without the access a request needs: 401 with a challenge naming the
    /// scope it needs and `error="insufficient_scope"`, as distribution answers, so that the
    /// client fetches a token with that scope and tries again (crane deletes with a `pull,push`
    /// token first). Should the user not have that access, the new token lacks it too and the
    /// retry is refused the same way.
    async fn insufficient_scope(&self, caller: &Caller, claims: &Claims, scope: &str) -> Denial {
        let key = [format!("{}:{scope}", claims.jti)];
        let again = self.limits.refused_scopes.blocked(&key).await.is_some();
        if !again {
            self.limits.refused_scopes.failed(&key).await;
        }
        Denial::InsufficientScope {
            challenge: self.challenge_for(caller, Some(scope), Some("insufficient_scope")),
            message: format!("the token does not grant this access; it needs {scope}"),
            again,
        }
    }

    /// Counts an access decision; `Ok(true)` when an anonymous caller was let through.
    fn count_outcome(&self, outcome: Result<bool, &Denial>) {
        self.count(match outcome {
            Ok(true) => "allowed_anonymous",
            Ok(false) => "allowed",
            Err(Denial::Unauthenticated { challenge, .. }) if challenge.contains("invalid_token") => "invalid_token",
            Err(Denial::Unauthenticated { .. }) => "unauthenticated",
            Err(Denial::InsufficientScope { .. }) => "insufficient_scope",
            Err(Denial::Forbidden(_)) => "forbidden",
            Err(Denial::TooManyAttempts { .. }) => "rate_limited",
            Err(Denial::BadRequest(_)) => "bad_request",
        });
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

    async fn check_token(&self, caller: &Caller, scope: Scope<'_>) -> Result<Identity, Denial> {
        let needed = scope.challenge();
        let claims = self.verified_claims(caller, needed.as_deref())?;
        if !covers(&claims, &scope) {
            return Err(self.insufficient_scope(caller, &claims, needed.as_deref().unwrap_or_default()).await);
        }
        Ok(if claims.sub.is_empty() { Identity::Anonymous } else { Identity::User(claims.sub) })
    }

    /// The claims of the caller's bearer token, once its signature, issuer, audience and times
    /// are checked; a challenge naming `scope` otherwise.
    fn verified_claims(&self, caller: &Caller, scope: Option<&str>) -> Result<Claims, Denial> {
        let refuse = |error, message: &str| Denial::Unauthenticated {
            challenge: self.challenge_for(caller, scope, error),
            message: message.to_owned(),
        };
        let (Some(Credentials::Bearer(token)), Some(tokens)) = (&caller.credentials, &self.tokens) else {
            return Err(refuse(None, "authentication required"));
        };
        tokens.verify(token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            refuse(Some("invalid_token"), "invalid or expired token")
        })
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

    /// Checks a user's password.
    ///
    /// Failures are counted per user and address, per address, and per user. Past the limit,
    /// the first two refuse logins (429) until the window ends: one address guessing, at one
    /// user or at many, is stopped. The per-user count never refuses anything (or anyone could
    /// lock a user out by failing from elsewhere): it only slows that user's logins down, by a
    /// delay that doubles with every failure past the limit, up to two seconds.
    pub async fn login(&self, user: &str, password: &str, address: &str) -> Result<Identity, Denial> {
        let logins = &self.limits.logins;
        let (pair, from, whom) = (format!("pair:{user}@{address}"), format!("addr:{address}"), format!("user:{user}"));
        if let Some(retry_after) = logins.blocked(&[pair.clone(), from.clone()]).await {
            self.count("login_rate_limited");
            return Err(Denial::TooManyAttempts { retry_after });
        }
        let Some(users) = &self.users else {
            return Err(Denial::Unauthenticated {
                challenge: format!("Basic realm=\"{}\"", self.service),
                message: "no users are configured".into(),
            });
        };
        let beyond = logins.failures(&whom).await.saturating_sub(logins.max_failures());
        if beyond > 0 {
            tokio::time::sleep(slow_down(beyond)).await;
        }
        if users.verify(user, password).await {
            self.count("login_succeeded");
            logins.succeeded(&pair).await;
            Ok(Identity::User(user.to_owned()))
        } else {
            self.count("login_failed");
            logins.failed(&[pair, from, whom]).await;
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
                // An entry is kept even when nothing is granted (the token spec's `[]`): it
                // tells the registry that the client asked and was refused.
                Some(AccessEntry { kind: "repository".into(), name: repository.to_string(), actions })
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

    /// What `who` may do in `repository`, for pages that show only what the rules allow
    /// (everything when authentication is off).
    pub fn actions(&self, who: &Identity, repository: &RepoName) -> Vec<Action> {
        match self.mode {
            Mode::None => vec![Action::Pull, Action::Push, Action::Delete],
            _ => self.rules.allowed(who, repository),
        }
    }
}

/// The delay before a login of a user with `beyond` failures past the limit: 100 ms, doubled
/// for each further failure, at most two seconds.
fn slow_down(beyond: u32) -> Duration {
    Duration::from_millis(100u64 << (beyond - 1).min(5)).min(Duration::from_secs(2))
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
            Limits::in_memory(5, Duration::from_secs(60), Duration::from_secs(60)),
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
        let entry = |name: &str, actions: &[&str]| AccessEntry {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        };
        // What was asked and refused stays in the token with no actions, as the token spec's `[]`.
        assert_eq!(granted, [entry("a/b", &["pull"]), entry("other", &[])]);
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
