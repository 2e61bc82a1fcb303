//! Pull-through caching of other registries (`[[upstream]]`).
//!
//! A repository `<name>/<path>` of an upstream called `<name>` is a cache of `<path>` at that
//! upstream (Docker Hub's one-component names get `library/`). Clients reach it by that path, or
//! as a containerd mirror: `/v2/<path>/…?ns=<registry host>` names the upstream by its host.
//!
//! - Manifests by digest never change: once cached, they are served without asking upstream.
//! - A tag is served from the cache within the upstream's `ttl`; after it, a `HEAD` asks
//!   upstream for its digest (Docker Hub does not count `HEAD`s against its pull limit), and a
//!   `GET` follows only when the digest changed. When upstream fails (429, 5xx, timeout), the
//!   cached copy is served with a `Warning` header.
//! - A blob that is not cached is fetched once, however many clients and replicas ask: the
//!   fetching request holds a lock in the session store (Redis with several replicas) and the
//!   others wait for the blob to be stored. The fetch streams to its client while it is written
//!   to storage; the upload verifies the digest before the blob becomes visible, and the
//!   client's last bytes are held back until it has been verified, so that a client never
//!   receives a whole blob that does not match its digest.
//! - An index is stored without its platforms: each is fetched when a client asks for it.

mod client;
mod fetch;

pub use client::UpstreamError;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::rules::RepoPattern;
use crate::oci::RepoName;

/// One `[[upstream]]` entry, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// The first path component of the cached repositories: `dockerhub` serves
    /// `dockerhub/library/nginx`.
    pub name: String,
    /// The upstream registry, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// The registry host containerd names in `?ns=` (`docker.io`); the URL's host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Credentials for the upstream, sent as Basic or traded for a token, as the upstream asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password instead (a mounted secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// How long a tag is served from the cache before it is revalidated (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Upstream repositories that may be fetched (patterns such as `library/*`); all when
    /// unset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Requests per second to the upstream at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests to the upstream at once at most (blob downloads included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// One-component names get `library/` (Docker Hub's official images); on by default for
    /// `docker.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<bool>,
    /// Users who may push to and delete from the cached repositories, which are read-only to
    /// everyone else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// Pulls of names without an upstream's prefix that find nothing here are served from
    /// this upstream: Docker's `registry-mirrors` (which sends `library/nginx` as it is). One
    /// entry at most.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker_mirror: bool,
}

/// A compiled `[[upstream]]` entry.
pub struct Upstream {
    pub number: usize,
    pub name: String,
    pub url: String,
    pub host: String,
    pub ttl: Duration,
    repositories: Vec<RepoPattern>,
    library: bool,
    pub admins: Vec<String>,
    docker_mirror: bool,
    client: client::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

/// Where a request for a cached repository goes.
#[derive(Clone, Debug)]
pub struct Route<'a> {
    pub upstream: &'a Upstream,
    /// The repository at the upstream (`library/nginx`).
    pub remote: String,
    /// The repository here that caches it (`dockerhub/library/nginx`).
    pub local: RepoName,
}

/// Every configured upstream.
#[derive(Debug, Default)]
pub struct Upstreams {
    list: Vec<Upstream>,
}

/// The default revalidation interval of a tag.
const DEFAULT_TTL: Duration = Duration::from_secs(600);

impl Upstreams {
    pub fn compile(entries: &[UpstreamEntry], max_manifest: usize) -> Result<Upstreams, String> {
        let mut list: Vec<Upstream> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let number = i + 1;
            let at = |m: String| format!("[[upstream]] entry {number}: {m}");
            let valid_name = !e.name.is_empty()
                && e.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            if !valid_name {
                return Err(at(format!(
                    "name = {:?}: expected one path component of lowercase letters, digits, '.', '_', '-'",
                    e.name
                )));
            }
            if e.docker_mirror && list.iter().any(|u| u.docker_mirror) {
                return Err(at("docker_mirror: another entry is the Docker mirror already".into()));
            }
            if list.iter().any(|u| u.name == e.name) {
                return Err(at(format!("name = {:?} is taken by another entry", e.name)));
            }
            let url = e.url.trim_end_matches('/').to_owned();
            let host = match url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
                Some(rest) if !rest.is_empty() && !rest.contains('/') => rest.to_owned(),
                _ => return Err(at(format!("url = {:?}: expected http(s)://host[:port]", e.url))),
            };
            let host = e.host.clone().unwrap_or_else(|| canonical_host(&host));
            let ttl = match &e.ttl {
                Some(t) => humantime::parse_duration(t).map_err(|err| at(format!("ttl = {t:?}: {err}")))?,
                None => DEFAULT_TTL,
            };
            let repositories =
                e.repositories.iter().map(|p| RepoPattern::parse(p)).collect::<Result<_, _>>().map_err(at)?;
            let password = match (&e.password, &e.password_file) {
                (Some(_), Some(_)) => return Err(at("password and password_file: one or the other".into())),
                (Some(p), None) => Some(p.clone()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|err| at(format!("password_file = {f:?}: {err}")))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                (None, None) => None,
            };
            if password.is_some() != e.username.is_some() {
                return Err(at("username and password (or password_file) go together".into()));
            }
            if e.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(at("rate: expected a number of requests per second above 0".into()));
            }
            if e.concurrency == Some(0) {
                return Err(at("concurrency: expected at least 1".into()));
            }
            let credentials = e.username.clone().zip(password);
            let client =
                client::Client::new(&url, &e.name, credentials, e.rate, e.concurrency.unwrap_or(16), max_manifest)
                    .map_err(at)?;
            list.push(Upstream {
                number,
                name: e.name.clone(),
                library: e.library.unwrap_or(host == "docker.io"),
                url,
                host,
                ttl,
                repositories,
                admins: e.admins.clone(),
                docker_mirror: e.docker_mirror,
                client,
            });
        }
        Ok(Upstreams { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The upstream a repository of this registry caches, by its first component.
    pub fn route(&self, name: &str) -> Option<Route<'_>> {
        let (first, rest) = name.split_once('/')?;
        let upstream = self.list.iter().find(|u| u.name == first)?;
        upstream.route(rest)
    }

    /// The upstream that serves pulls of unprefixed names that found nothing here (Docker's
    /// `registry-mirrors`).
    pub fn docker_mirror(&self, name: &str) -> Option<Route<'_>> {
        self.list.iter().find(|u| u.docker_mirror)?.route(name)
    }

    /// The upstream a containerd mirror request names with `?ns=<host>`, for `name` there.
    pub fn mirror(&self, ns: &str, name: &str) -> Option<Route<'_>> {
        let host = canonical_host(ns);
        self.list.iter().find(|u| u.host == host)?.route(name)
    }
}

impl Upstream {
    fn route(&self, remote: &str) -> Option<Route<'_>> {
        let remote =
            if self.library && !remote.contains('/') { format!("library/{remote}") } else { remote.to_owned() };
        let local: RepoName = format!("{}/{remote}", self.name).parse().ok()?;
        Some(Route { upstream: self, remote, local })
    }

    /// Whether the upstream repository may be fetched.
    pub fn allows(&self, remote: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| p.matches(remote))
    }
}

/// Docker Hub answers to several names; containerd says `docker.io`.
fn canonical_host(host: &str) -> String {
    match host {
        "registry-1.docker.io" | "index.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, url: &str) -> UpstreamEntry {
        UpstreamEntry { name: name.into(), url: url.into(), ..Default::default() }
    }

    #[test]
    fn routes_by_prefix_and_by_mirror_host() {
        let ups = Upstreams::compile(
            &[entry("dockerhub", "https://registry-1.docker.io"), entry("ghcr", "https://ghcr.io/")],
            4 << 20,
        )
        .unwrap();
        let r = ups.route("dockerhub/nginx").unwrap();
        assert_eq!((r.remote.as_str(), r.local.as_str()), ("library/nginx", "dockerhub/library/nginx"));
        let r = ups.route("dockerhub/grafana/grafana").unwrap();
        assert_eq!(r.remote, "grafana/grafana");
        let r = ups.route("ghcr/nginx").unwrap();
        assert_eq!(r.remote, "nginx", "only docker.io has library/");
        assert!(ups.route("other/nginx").is_none() && ups.route("dockerhub").is_none());
        let r = ups.mirror("docker.io", "library/nginx").unwrap();
        assert_eq!(r.local.as_str(), "dockerhub/library/nginx");
        assert_eq!(ups.mirror("ghcr.io", "o/app").unwrap().local.as_str(), "ghcr/o/app");
        assert!(ups.mirror("quay.io", "o/app").is_none());
    }

    #[test]
    fn mistakes_name_the_entry_and_key() {
        let bad = |e: UpstreamEntry| Upstreams::compile(&[e], 1024).unwrap_err();
        assert!(bad(entry("Docker Hub", "https://x")).contains("entry 1: name"));
        assert!(bad(entry("d", "ftp://x")).contains("url"));
        assert!(bad(UpstreamEntry { ttl: Some("soon".into()), ..entry("d", "https://x") }).contains("ttl"));
        assert!(bad(UpstreamEntry { username: Some("u".into()), ..entry("d", "https://x") }).contains("username"));
        assert!(bad(UpstreamEntry { rate: Some(0.0), ..entry("d", "https://x") }).contains("rate"));
        assert!(
            bad(UpstreamEntry { repositories: vec!["A/B".into()], ..entry("d", "https://x") }).contains("repositories")
        );
        let two = Upstreams::compile(&[entry("d", "https://x"), entry("d", "https://y")], 1024).unwrap_err();
        assert!(two.contains("entry 2") && two.contains("taken"));
    }
}
