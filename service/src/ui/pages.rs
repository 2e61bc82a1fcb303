//! The pages, as maud templates: every interpolated value is HTML-escaped by maud; values a
//! user pushed (names, tags, labels, annotations, env, history) go through [`Shown`], which
//! also makes direction overrides and control characters visible instead of obeying them.

use maud::{DOCTYPE, Markup, Render, html};

use super::oci::{self, ImageConfig, Manifest};
use crate::metadata::{Referrer, RepositorySummary, StoredManifest, TagRow, Usage};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::registry::browse::CatalogPage;

/// A user-controlled string: escaped, with bidirectional controls (which could make
/// `exe.txt` read as `txt.exe`) and other control characters shown as `U+XXXX`.
pub struct Shown<'a>(pub &'a str);

impl Render for Shown<'_> {
    fn render_to(&self, buffer: &mut String) {
        for c in self.0.chars() {
            match c {
                '&' => buffer.push_str("&amp;"),
                '<' => buffer.push_str("&lt;"),
                '>' => buffer.push_str("&gt;"),
                '"' => buffer.push_str("&quot;"),
                '\'' => buffer.push_str("&#39;"),
                '\n' | '\t' => buffer.push(c),
                c if is_hidden(c) => buffer
                    .push_str(&format!("<span class=\"ctl\" title=\"hidden character\">U+{:04X}</span>", c as u32)),
                c => buffer.push(c),
            }
        }
    }
}

/// Characters that change how text around them reads, or do not show at all.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A query string value.
fn q(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Milliseconds since the epoch, as UTC.
fn when(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string().replace('T', " ").replace('Z', " UTC")
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

fn manifest_link(repository: &str, reference: &str) -> String {
    format!("/ui/r/{repository}/-/m/{reference}")
}

/// What the header shows of the visitor.
#[derive(Default)]
pub struct Nav {
    pub user: Option<String>,
    /// The CSRF token of the visitor's session, for the sign-out form.
    pub csrf: Option<String>,
    /// Whether there is anything to sign in to (authentication is on).
    pub sign_in: bool,
    pub usage: bool,
}

fn csrf_field(nav: &Nav) -> Markup {
    html! { @if let Some(token) = &nav.csrf { input type="hidden" name="csrf" value=(token); } }
}

fn layout(nav: &Nav, title: &str, crumbs: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (Shown(title)) " · Berth" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "Berth" }
                    nav.crumbs { (crumbs) }
                    @if nav.usage { a href="/ui/usage" { "Usage" } }
                    @if let Some(user) = &nav.user {
                        form.signout method="post" action="/ui/logout" {
                            span.user { (Shown(user)) } " "
                            (csrf_field(nav))
                            button type="submit" { "Sign out" }
                        }
                    } @else if nav.sign_in {
                        a href="/ui/login" { "Sign in" }
                    }
                    button.theme type="button" data-theme-toggle hidden { "Theme" }
                }
                main { (body) }
            }
        }
    }
}

pub fn error(nav: &Nav, status: u16, message: &str) -> Markup {
    layout(
        nav,
        "Error",
        html! {},
        html! {
            h1 { (status) }
            p { (Shown(message)) }
            p { a href="/ui/" { "Back to the repositories" } }
        },
    )
}

pub struct CatalogView<'a> {
    pub q: &'a str,
    pub prefix: bool,
    pub page: &'a CatalogPage,
    /// The `docker login` command of a signed-in user.
    pub login: Option<&'a str>,
}

pub fn catalog(nav: &Nav, view: &CatalogView<'_>) -> Markup {
    let mode = if view.prefix { "prefix" } else { "contains" };
    layout(
        nav,
        "Repositories",
        html! { span { "Repositories" } },
        html! {
            @if let Some(login) = view.login {
                p.login { "To push and pull from a shell: " (copy(login)) }
            }
            form.search method="get" action="/ui/" role="search" {
                input type="search" name="q" value=(view.q) placeholder="Search repositories" aria-label="Search";
                select name="match" aria-label="Match" {
                    option value="contains" selected[!view.prefix] { "contains" }
                    option value="prefix" selected[view.prefix] { "starts with" }
                }
                button type="submit" { "Search" }
            }
            @if view.page.repositories.is_empty() {
                p.empty { "No repositories." }
            } @else {
                table.list {
                    thead { tr { th { "Repository" } th.num { "Tags" } th.num { "Size" } th { "Last push" } } }
                    tbody {
                        @for r in &view.page.repositories {
                            (catalog_row(r))
                        }
                    }
                }
            }
            @if let Some(next) = &view.page.next {
                p.pager { a rel="next" href={ "/ui/?q=" (q(view.q)) "&match=" (mode) "&after=" (q(next)) } { "Next page →" } }
            }
        },
    )
}

fn catalog_row(r: &RepositorySummary) -> Markup {
    html! {
        tr {
            td { a href={ "/ui/r/" (r.name) } { (Shown(&r.name)) } }
            td.num { (r.tags) }
            td.num { (bytes(r.bytes)) }
            td { @if let Some(t) = r.last_push { (when(t)) } @else { "—" } }
        }
    }
}

fn repository_crumbs(repository: &str) -> Markup {
    html! {
        a href="/ui/" { "Repositories" }
        " / "
        a href={ "/ui/r/" (repository) } { (Shown(repository)) }
    }
}

pub struct TagView {
    pub row: TagRow,
    pub size: Option<u64>,
    pub platforms: Vec<String>,
    pub created: Option<String>,
}

pub struct RepositoryView<'a> {
    pub repository: &'a RepoName,
    pub summary: &'a RepositorySummary,
    pub tags: &'a [TagView],
    pub immutable: &'a [bool],
    /// Per tag: whether the visitor may delete it.
    pub deletable: &'a [bool],
    /// Tags the repository's `[[retention]]` rule would remove, with the reason.
    pub retention: &'a std::collections::HashMap<String, String>,
    /// The namespace whose usage the visitor may look at.
    pub namespace: Option<&'a str>,
    pub page: u64,
    pub per_page: u64,
    pub by_name: bool,
    pub host: &'a str,
}

fn copy(command: &str) -> Markup {
    html! {
        span.copy {
            code { (Shown(command)) }
            button type="button" data-copy=(command) hidden { "Copy" }
        }
    }
}

fn delete_link(repository: &str, what: &str, value: &str, label: &str) -> Markup {
    html! { a.danger href={ "/ui/r/" (repository) "/-/delete?" (what) "=" (q(value)) } { (label) } }
}

pub fn repository(nav: &Nav, view: &RepositoryView<'_>) -> Markup {
    let name = view.repository.as_str();
    let pages = view.summary.tags.div_ceil(view.per_page).max(1);
    let sort = if view.by_name { "name" } else { "pushed" };
    layout(
        nav,
        name,
        repository_crumbs(name),
        html! {
            h1 { (Shown(name)) }
            p.facts {
                (view.summary.tags) (if view.summary.tags == 1 { " tag · " } else { " tags · " }) (bytes(view.summary.bytes)) " of distinct blobs"
                @if let Some(t) = view.summary.last_push { " · last push " (when(t)) }
                @if let Some(ns) = view.namespace { " · " a href={ "/ui/usage?ns=" (q(ns)) } { "usage of " (Shown(ns)) } }
            }
            p.sort {
                "Sort: "
                @if view.by_name { a href={ "/ui/r/" (name) "?sort=pushed" } { "by push time" } " · " strong { "by name" } }
                @else { strong { "by push time" } " · " a href={ "/ui/r/" (name) "?sort=name" } { "by name" } }
            }
            table.list.tags {
                thead { tr { th { "Tag" } th { "Digest" } th.num { "Size" } th { "Type" } th { "Created" } th { "Pushed" } th { "Pull" } } }
                tbody {
                    @for ((t, fixed), deletable) in view.tags.iter().zip(view.immutable).zip(view.deletable) {
                        tr {
                            td {
                                a href=(manifest_link(name, &t.row.name)) { (Shown(&t.row.name)) }
                                @if *fixed { " " span.badge title="an [[immutable]] rule fixes this tag" { "immutable" } }
                                @if let Some(why) = view.retention.get(&t.row.name) {
                                    div.mark { span.badge.warn { "retention removes" } " " span.mt { (Shown(why)) } }
                                }
                                @if *deletable { div { (delete_link(name, "tag", &t.row.name, "Delete tag…")) } }
                            }
                            td { a.digest href=(manifest_link(name, t.row.digest.as_str())) title=(t.row.digest.as_str()) { (short(t.row.digest.as_str())) } }
                            td.num { @if let Some(s) = t.size { (bytes(s)) } @else { "—" } }
                            td {
                                span.mt { (Shown(&t.row.media_type)) }
                                @if !t.platforms.is_empty() {
                                    div.platforms { @for p in &t.platforms { span.badge { (Shown(p)) } " " } }
                                }
                            }
                            td { @if let Some(c) = &t.created { (Shown(c)) } @else { "—" } }
                            td { (when(t.row.pushed_at)) }
                            td.pull {
                                (copy(&format!("docker pull {}/{name}:{}", view.host, t.row.name)))
                                (copy(&format!("podman pull {}/{name}@{}", view.host, t.row.digest)))
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                p.pager {
                    @if view.page > 1 { a rel="prev" href={ "/ui/r/" (name) "?sort=" (sort) "&page=" (view.page - 1) } { "← Previous" } " " }
                    "Page " (view.page) " of " (pages)
                    @if view.page < pages { " " a rel="next" href={ "/ui/r/" (name) "?sort=" (sort) "&page=" (view.page + 1) } { "Next →" } }
                }
            }
        },
    )
}

pub struct ManifestView<'a> {
    pub repository: &'a RepoName,
    /// Whether the visitor may delete this manifest (and every tag of it).
    pub deletable: bool,
    pub stored: &'a StoredManifest,
    pub manifest: &'a Manifest,
    pub index: bool,
    pub config: Option<&'a ImageConfig>,
    pub config_raw: Option<&'a str>,
    pub platform_sizes: &'a [Option<u64>],
    pub referrers: &'a [Referrer],
    pub tags: &'a [Tag],
    pub raw: &'a str,
    pub host: &'a str,
}

fn pairs<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> Markup {
    html! {
        table.kv { @for (k, v) in rows { tr { th { (Shown(k)) } td { (Shown(v)) } } } }
    }
}

pub fn manifest(nav: &Nav, view: &ManifestView<'_>) -> Markup {
    let name = view.repository.as_str();
    let digest = view.stored.digest.as_str();
    let m = view.manifest;
    layout(
        nav,
        &format!("{name}@{}", short(digest)),
        html! { (repository_crumbs(name)) " / " span { (short(digest)) } },
        html! {
            h1 { (if view.index { "Index" } else { "Manifest" }) " " code { (short(digest)) } }
            table.kv {
                tr { th { "Digest" } td { code { (digest) } } }
                tr { th { "Media type" } td { (Shown(&view.stored.media_type)) } }
                @if let Some(t) = &m.artifact_type { tr { th { "Artifact type" } td { (Shown(t)) } } }
                tr { th { "Size" } td { (bytes(view.stored.size)) " (manifest)" @if !view.index { ", " (bytes(m.image_size())) " (config and layers)" } } }
                tr { th { "Tags" } td { @if view.tags.is_empty() { "none" } @for t in view.tags { span.badge { (Shown(t.as_str())) } " " } } }
                @if let Some(s) = &m.subject { tr { th { "Refers to" } td { a href=(manifest_link(name, &s.digest)) { code { (Shown(&s.digest)) } } } } }
                tr { th { "Pull" } td { (copy(&format!("docker pull {}/{name}@{digest}", view.host))) } }
            }
            @if view.deletable { p { (delete_link(name, "digest", digest, "Delete this manifest…")) } }
            @if view.index {
                h2 { "Platforms" }
                table.list {
                    thead { tr { th { "Platform" } th { "Digest" } th.num { "Size" } th { "Media type" } } }
                    tbody {
                        @for (child, size) in m.manifests.iter().zip(view.platform_sizes) {
                            tr {
                                td { @if let Some(p) = &child.platform { (Shown(&p.show())) } @else { "—" } }
                                td { a href=(manifest_link(name, &child.digest)) { code { (Shown(short(&child.digest))) } } }
                                td.num { @if let Some(s) = size { (bytes(*s)) } @else { "—" } }
                                td { (Shown(&child.media_type)) }
                            }
                        }
                    }
                }
            } @else {
                (layers(m, view.config))
            }
            @if let Some(c) = view.config { (config(c)) }
            @if let Some(raw) = view.config_raw { h2 { "Config" } pre.raw { (Shown(raw)) } }
            @if !m.annotations.is_empty() {
                h2 { "Annotations" }
                (pairs(m.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            }
            h2 { "Referrers" }
            (referrers(name, view.referrers))
            details {
                summary { "Raw JSON" }
                pre.raw { (Shown(view.raw)) }
            }
        },
    )
}

fn layers(m: &Manifest, config: Option<&ImageConfig>) -> Markup {
    // History entries that made a layer, in order, give each layer its command.
    let commands: Vec<&str> = config
        .map(|c| c.history.iter().filter(|h| !h.empty_layer).map(|h| h.created_by.as_deref().unwrap_or("")).collect())
        .unwrap_or_default();
    html! {
        h2 { "Layers" }
        table.list {
            thead { tr { th.num { "#" } th { "Digest" } th.num { "Size" } th { "Media type" } th { "Command" } } }
            tbody {
                @for (i, layer) in m.layers.iter().enumerate() {
                    tr {
                        td.num { (i + 1) }
                        td { code title=(layer.digest) { (Shown(short(&layer.digest))) } }
                        td.num { (bytes(layer.size)) }
                        td { (Shown(&layer.media_type)) }
                        td { @if let Some(c) = commands.get(i) { code.cmd { (Shown(c)) } } }
                    }
                }
            }
        }
    }
}

fn config(c: &ImageConfig) -> Markup {
    let run = &c.config;
    let join = |v: &Option<Vec<String>>| v.as_ref().map(|v| serde_json::to_string(v).unwrap_or_default());
    let (entrypoint, cmd) = (join(&run.entrypoint), join(&run.cmd));
    let ports: Option<String> = run.exposed_ports.as_ref().map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "));
    let platform = match (&c.os, &c.architecture) {
        (Some(os), Some(arch)) => Some(format!("{os}/{arch}")),
        _ => None,
    };
    let facts: Vec<(&str, Option<&str>)> = vec![
        ("Created", c.created.as_deref()),
        ("Author", c.author.as_deref()),
        ("Platform", platform.as_deref()),
        ("Entrypoint", entrypoint.as_deref()),
        ("Cmd", cmd.as_deref()),
        ("User", run.user.as_deref()),
        ("Working directory", run.working_dir.as_deref()),
        ("Exposed ports", ports.as_deref()),
    ];
    html! {
        h2 { "Config" }
        (pairs(facts.into_iter().filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))))
        @if let Some(env) = &run.env {
            h3 { "Environment" }
            table.kv { @for e in env { @let (k, v) = e.split_once('=').unwrap_or((e, "")); tr { th { (Shown(k)) } td { (Shown(v)) } } } }
        }
        @if let Some(labels) = run.labels.as_ref().filter(|l| !l.is_empty()) {
            h3 { "Labels" }
            (pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
        }
        @if !c.history.is_empty() {
            h3 { "History" }
            table.list {
                thead { tr { th { "Created" } th { "Command" } th { "Layer" } } }
                tbody {
                    @for h in &c.history {
                        tr {
                            td { (Shown(h.created.as_deref().unwrap_or(""))) }
                            td { code.cmd { (Shown(h.created_by.as_deref().unwrap_or(""))) } @if let Some(c) = &h.comment { div.comment { (Shown(c)) } } }
                            td { @if h.empty_layer { "empty" } @else { "layer" } }
                        }
                    }
                }
            }
        }
    }
}

fn referrers(repository: &str, referrers: &[Referrer]) -> Markup {
    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&Referrer>> = Default::default();
    for r in referrers {
        let t = r.artifact_type.as_deref().unwrap_or(&r.media_type);
        groups.entry((oci::referrer_kind(t), t)).or_default().push(r);
    }
    html! {
        @if groups.is_empty() { p.empty { "None." } }
        @for ((kind, artifact_type), items) in &groups {
            h3 { (kind) " " span.mt { (Shown(artifact_type)) } }
            ul.referrers {
                @for r in items {
                    li { a href=(manifest_link(repository, r.digest.as_str())) { code { (short(r.digest.as_str())) } } " · " (bytes(r.size)) }
                }
            }
        }
    }
}

pub fn login(nav: &Nav, next: &str, message: Option<&str>) -> Markup {
    layout(
        nav,
        "Sign in",
        html! { span { "Sign in" } },
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { p.error role="alert" { (Shown(m)) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label { "User" input type="text" name="user" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
            p.mt { "The same users as " code { "docker login" } "." }
        },
    )
}

pub struct DeleteView<'a> {
    pub repository: &'a RepoName,
    pub reference: &'a Reference,
    pub digest: &'a Digest,
    /// The tags that go with it.
    pub tags: &'a [Tag],
    /// Tags an `[[immutable]]` rule keeps from being deleted, with the rule.
    pub fixed: &'a [String],
}

pub fn confirm_delete(nav: &Nav, view: &DeleteView<'_>) -> Markup {
    let name = view.repository.as_str();
    let digest = view.digest.as_str();
    let (what, field, value) = match view.reference {
        Reference::Tag(tag) => (format!("tag {tag}"), "tag", tag.as_str().to_owned()),
        Reference::Digest(d) => (format!("manifest {}", short(d.as_str())), "digest", d.as_str().to_owned()),
    };
    layout(
        nav,
        &format!("Delete {what}"),
        html! { (repository_crumbs(name)) " / " span { "Delete" } },
        html! {
            h1 { "Delete " (Shown(&what)) "?" }
            @match view.reference {
                Reference::Tag(_) => p { "The tag goes; manifest " code { (short(digest)) } " stays, and can still be pulled by digest." },
                Reference::Digest(_) => p {
                    "Manifest " code { (digest) } " goes, with "
                    @if view.tags.is_empty() { "no tags" } @else { "its tags: " @for t in view.tags { span.badge { (Shown(t.as_str())) } " " } }
                    ". Clients pulling it by tag or digest get “manifest unknown” from then on."
                },
            }
            @if !view.fixed.is_empty() {
                p.error role="alert" { "It cannot be deleted: an immutable rule keeps " @for f in view.fixed { (Shown(f)) " " } }
            } @else {
                form.confirm method="post" action={ "/ui/r/" (name) "/-/delete" } {
                    (csrf_field(nav))
                    input type="hidden" name=(field) value=(value);
                    button.danger type="submit" { "Delete" }
                    " "
                    a href=(manifest_link(name, &value)) { "Cancel" }
                }
            }
        },
    )
}

pub struct NamespaceUsage {
    pub name: String,
    /// Bytes and repositories, when the visitor may see all of it.
    pub total: Option<(u64, u64)>,
    pub repositories: Vec<RepositorySummary>,
    pub more: bool,
}

pub struct UsageView {
    pub quotas: Vec<Usage>,
    pub namespace: Option<NamespaceUsage>,
}

pub fn usage(nav: &Nav, view: &UsageView) -> Markup {
    let ns = view.namespace.as_ref();
    layout(
        nav,
        "Usage",
        html! { a href="/ui/" { "Repositories" } " / " span { "Usage" } },
        html! {
            h1 { "Storage usage" }
            p.mt { "Sizes count each distinct blob once, per repository and per namespace, as quotas do." }
            form.search method="get" action="/ui/usage" {
                input type="search" name="ns" value=(ns.map_or("", |n| n.name.as_str())) placeholder="Namespace, e.g. team" aria-label="Namespace";
                button type="submit" { "Show" }
            }
            @if let Some(ns) = ns {
                h2 { "Namespace " (Shown(&ns.name)) }
                @match ns.total {
                    Some((bytes_used, repositories)) => p.facts { (repositories) " repositories · " (bytes(bytes_used)) " of distinct blobs" },
                    None => p.facts { "No total: it holds repositories you may not see." },
                }
                @if ns.repositories.is_empty() { p.empty { "No repositories you may see." } }
                @else {
                    table.list {
                        thead { tr { th { "Repository" } th.num { "Tags" } th.num { "Size" } th { "Last push" } } }
                        tbody { @for r in &ns.repositories { (catalog_row(r)) } }
                    }
                    @if ns.more { p.pager { a href={ "/ui/?match=prefix&q=" (q(&format!("{}/", ns.name))) } { "All of its repositories →" } } }
                }
            }
            h2 { "Quotas" }
            @if view.quotas.is_empty() { p.empty { "No [[quota]] you may see is configured." } }
            @else {
                table.list {
                    thead { tr { th { "Namespace" } th.num { "Used" } th.num { "Limit" } th { "" } } }
                    tbody {
                        @for u in &view.quotas {
                            @let percent = u.bytes.saturating_mul(100).checked_div(u.limit).map_or(100, |p| p.min(100));
                            tr {
                                td { a href={ "/ui/usage?ns=" (q(&u.namespace)) } { (Shown(&u.namespace)) } }
                                td.num { (bytes(u.bytes)) }
                                td.num { (bytes(u.limit)) }
                                td { meter min="0" max="100" value=(percent) title={ (percent) "%" } {} " " (percent) "%" }
                            }
                        }
                    }
                }
            }
        },
    )
}
