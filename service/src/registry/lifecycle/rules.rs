//! The lifecycle rules as the operator writes them (`[[retention]]`, `[[immutable]]`,
//! `[[quota]]` in the TOML file), compiled, and the decisions they make: pure functions over
//! metadata rows, tested here exhaustively.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metadata::TagInfo;

/// One `[[retention]]` entry, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionEntry {
    /// Repository pattern: `*` within a path segment, `**` any number of segments.
    pub repositories: String,
    /// Keep the N most recently pushed tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// Keep the tags this regular expression matches (whole tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tags: Option<String>,
    /// Keep the tags pulled within this long (`30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within: Option<String>,
    /// Remove only tags pushed longer ago than this; without it, every tag no keep rule keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_older_than: Option<String>,
    /// Remove untagged manifests stored longer ago than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_untagged_older_than: Option<String>,
}

/// One `[[immutable]]` entry, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableEntry {
    pub repositories: String,
    /// The tags it fixes (regular expression, whole tag); every tag when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// Tags it leaves alone even if `tags` matches them (`latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_tags: Option<String>,
    /// Whether such a tag (and its manifest) may be deleted, by a user allowed to delete or by
    /// retention.
    #[serde(default = "yes")]
    pub allow_delete: bool,
}

fn yes() -> bool {
    true
}

/// One `[[quota]]` entry, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaEntry {
    /// A repository prefix: `team-a` counts `team-a` and everything under `team-a/`.
    pub namespace: String,
    /// Bytes: a number, or with a unit (`500MB`, `10GiB`).
    pub limit: ByteSize,
}

/// A size in bytes, written as a number or with a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(text) => {
                let text = text.trim();
                let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
                let (number, unit) = text.split_at(split);
                let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 10GiB"))?;
                let scale: u64 = match unit.trim() {
                    "" | "B" => 1,
                    "kB" | "KB" => 1_000,
                    "MB" => 1_000_000,
                    "GB" => 1_000_000_000,
                    "TB" => 1_000_000_000_000,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    "TiB" => 1 << 40,
                    other => {
                        return Err(format!(
                            "unknown unit {other:?} in {text:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                        ));
                    }
                };
                Ok((number * scale as f64) as u64)
            }
        }
    }
}

/// A repository pattern, in the access rules' syntax.
#[derive(Clone, Debug)]
pub struct RepoPattern(String);

impl RepoPattern {
    pub(crate) fn parse(pattern: &str) -> Result<RepoPattern, String> {
        if pattern.is_empty() || pattern.contains("{user}") {
            return Err(format!("repositories = {pattern:?}: expected a pattern such as \"team/**\""));
        }
        let valid = pattern.split('/').all(|segment| {
            !segment.is_empty()
                && segment.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*".contains(c))
        });
        if !valid {
            return Err(format!(
                "repositories = {pattern:?}: segments of lowercase letters, digits, '.', '_', '-' and '*' separated by '/'"
            ));
        }
        Ok(RepoPattern(pattern.to_owned()))
    }

    pub fn matches(&self, repository: &str) -> bool {
        crate::auth::rules::pattern_matches(&self.0, repository, None)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A regular expression that must match the whole text.
#[derive(Clone, Debug)]
pub struct Whole(regex::Regex);

impl Whole {
    fn parse(key: &str, pattern: &str) -> Result<Whole, String> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(Whole).map_err(|e| {
            // The parser's message draws the place on lines of its own: its last line says what.
            let text = e.to_string();
            let what = text.lines().last().unwrap_or_default().trim_start_matches("error: ").to_owned();
            format!("{key} = {pattern:?} is not a valid regular expression: {what}")
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

fn duration(key: &str, text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| format!("{key} = {t:?}: expected a duration such as 30d: {e}"))
        })
        .transpose()
}

/// A compiled `[[retention]]` entry.
#[derive(Clone, Debug)]
pub struct Retention {
    /// 1-based, as the operator counts entries, for "which rule decided".
    pub number: usize,
    pub repositories: RepoPattern,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<Whole>,
    pub keep_pulled_within: Option<Duration>,
    pub remove_older_than: Option<Duration>,
    pub remove_untagged_older_than: Option<Duration>,
}

/// A compiled `[[immutable]]` entry.
#[derive(Clone, Debug)]
pub struct Immutable {
    pub number: usize,
    pub repositories: RepoPattern,
    pub tags: Option<Whole>,
    pub except_tags: Option<Whole>,
    pub allow_delete: bool,
}

impl Immutable {
    pub fn fixes(&self, repository: &str, tag: &str) -> bool {
        self.repositories.matches(repository)
            && self.tags.as_ref().is_none_or(|t| t.matches(tag))
            && !self.except_tags.as_ref().is_some_and(|t| t.matches(tag))
    }

    /// How a refusal names it.
    pub fn describe(&self) -> String {
        format!("[[immutable]] entry {} (repositories = {:?})", self.number, self.repositories.as_str())
    }
}

/// Every lifecycle rule in force.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    pub retention: Vec<Retention>,
    pub immutable: Vec<Immutable>,
    /// Namespace and limit in bytes.
    pub quotas: Vec<(String, u64)>,
}

impl Lifecycle {
    /// Compiles the entries; a mistake names the entry (`[[retention]] 2`) and its key.
    pub fn compile(
        retention: &[RetentionEntry],
        immutable: &[ImmutableEntry],
        quota: &[QuotaEntry],
    ) -> Result<Lifecycle, String> {
        let mut rules = Lifecycle::default();
        for (i, e) in retention.iter().enumerate() {
            let number = i + 1;
            let at = |m: String| format!("[[retention]] entry {number}: {m}");
            let rule = Retention {
                number,
                repositories: RepoPattern::parse(&e.repositories).map_err(at)?,
                keep_last: e.keep_last,
                keep_tags: e.keep_tags.as_deref().map(|p| Whole::parse("keep_tags", p)).transpose().map_err(at)?,
                keep_pulled_within: duration("keep_pulled_within", &e.keep_pulled_within).map_err(at)?,
                remove_older_than: duration("remove_older_than", &e.remove_older_than).map_err(at)?,
                remove_untagged_older_than: duration("remove_untagged_older_than", &e.remove_untagged_older_than)
                    .map_err(at)?,
            };
            let removes_tags = rule.keep_last.is_some()
                || rule.keep_tags.is_some()
                || rule.keep_pulled_within.is_some()
                || rule.remove_older_than.is_some();
            if !removes_tags && rule.remove_untagged_older_than.is_none() {
                return Err(at("names no rule (keep_last, keep_tags, keep_pulled_within, remove_older_than, \
                               remove_untagged_older_than)"
                    .into()));
            }
            if rule.keep_last == Some(0) && rule.keep_tags.is_none() && rule.keep_pulled_within.is_none() {
                return Err(
                    at("keep_last = 0 with no other keep rule removes every tag; use remove_older_than".into()),
                );
            }
            if let Some(other) = rules.retention.iter().find(|r| r.repositories.as_str() == e.repositories) {
                return Err(at(format!(
                    "repositories = {:?} is also [[retention]] entry {}: say both in one entry",
                    e.repositories, other.number
                )));
            }
            rules.retention.push(rule);
        }
        for (i, e) in immutable.iter().enumerate() {
            let number = i + 1;
            let at = |m: String| format!("[[immutable]] entry {number}: {m}");
            let rule = Immutable {
                number,
                repositories: RepoPattern::parse(&e.repositories).map_err(at)?,
                tags: e.tags.as_deref().map(|p| Whole::parse("tags", p)).transpose().map_err(at)?,
                except_tags: e
                    .except_tags
                    .as_deref()
                    .map(|p| Whole::parse("except_tags", p))
                    .transpose()
                    .map_err(at)?,
                allow_delete: e.allow_delete,
            };
            if let Some(other) = rules
                .immutable
                .iter()
                .zip(immutable)
                .find(|(_, o)| o.repositories == e.repositories && o.tags == e.tags && o.except_tags == e.except_tags)
                .map(|(r, _)| r)
                && other.allow_delete != rule.allow_delete
            {
                return Err(at(format!(
                    "the same repositories and tags as [[immutable]] entry {}, with another allow_delete",
                    other.number
                )));
            }
            rules.immutable.push(rule);
        }
        for (i, e) in quota.iter().enumerate() {
            let at = |m: String| format!("[[quota]] entry {}: {m}", i + 1);
            let namespace = e.namespace.trim_end_matches('/');
            if namespace.is_empty() || namespace.contains('*') || namespace.parse::<crate::oci::RepoName>().is_err() {
                return Err(at(format!(
                    "namespace = {:?}: expected a repository prefix such as \"team-a\"",
                    e.namespace
                )));
            }
            let limit = e.limit.bytes().map_err(|m| at(format!("limit: {m}")))?;
            if let Some(j) = rules.quotas.iter().position(|(n, _)| n == namespace) {
                return Err(at(format!("namespace {namespace:?} has a quota already, in entry {}", j + 1)));
            }
            rules.quotas.push((namespace.to_owned(), limit));
        }
        Ok(rules)
    }

    /// The first retention rule for a repository (entries are tried in order).
    pub fn retention_for(&self, repository: &str) -> Option<&Retention> {
        self.retention.iter().find(|r| r.repositories.matches(repository))
    }

    /// The immutable rules fixing a tag.
    pub fn fixing<'a>(&'a self, repository: &'a str, tag: &'a str) -> impl Iterator<Item = &'a Immutable> + 'a {
        self.immutable.iter().filter(move |r| r.fixes(repository, tag))
    }

    /// The rule forbidding the tag's deletion, if one does.
    pub fn forbids_delete(&self, repository: &str, tag: &str) -> Option<&Immutable> {
        self.immutable.iter().find(|r| !r.allow_delete && r.fixes(repository, tag))
    }

    /// The quota namespaces a repository counts in.
    pub fn quotas_of<'a>(&'a self, repository: &'a str) -> impl Iterator<Item = &'a (String, u64)> + 'a {
        self.quotas.iter().filter(move |(n, _)| in_namespace(n, repository))
    }

    pub fn is_empty(&self) -> bool {
        self.retention.is_empty() && self.immutable.is_empty() && self.quotas.is_empty()
    }
}

/// Whether `repository` is `namespace` or under it.
pub fn in_namespace(namespace: &str, repository: &str) -> bool {
    repository.strip_prefix(namespace).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A tag retention removes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub tag: TagInfo,
    pub reason: String,
}

/// The tags `rule` removes from a repository's `tags` at `now` (milliseconds since the epoch),
/// leaving those `protected` says a rule forbids deleting.
pub fn tags_to_remove(rule: &Retention, tags: &[TagInfo], now: i64, protected: impl Fn(&str) -> bool) -> Vec<Removal> {
    let removes_tags = rule.keep_last.is_some()
        || rule.keep_tags.is_some()
        || rule.keep_pulled_within.is_some()
        || rule.remove_older_than.is_some();
    if !removes_tags {
        return Vec::new();
    }
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    // The last N by push time; ties by name, so that the choice is stable.
    let mut by_push: Vec<&TagInfo> = tags.iter().collect();
    by_push.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then_with(|| a.name.cmp(&b.name)));
    let newest: std::collections::HashSet<&str> =
        by_push.iter().take(rule.keep_last.unwrap_or(0)).map(|t| t.name.as_str()).collect();
    let mut removals = Vec::new();
    for tag in tags {
        if newest.contains(tag.name.as_str())
            || rule.keep_tags.as_ref().is_some_and(|k| k.matches(&tag.name))
            || rule.keep_pulled_within.is_some_and(|d| tag.pulled_at.is_some_and(|p| p >= now.saturating_sub(ms(d))))
            || protected(&tag.name)
        {
            continue;
        }
        let age = now.saturating_sub(tag.pushed_at);
        if rule.remove_older_than.is_some_and(|d| age <= ms(d)) {
            continue;
        }
        let mut why =
            vec![format!("[[retention]] entry {} (repositories = {:?})", rule.number, rule.repositories.as_str())];
        if let Some(d) = rule.remove_older_than {
            why.push(format!("pushed {} ago, over {}", human(age), humantime::format_duration(d)));
        }
        if let Some(n) = rule.keep_last {
            why.push(format!("not among the last {n} pushed"));
        }
        if rule.keep_tags.is_some() {
            why.push("keep_tags does not match".into());
        }
        if let Some(d) = rule.keep_pulled_within {
            why.push(match tag.pulled_at {
                Some(p) => {
                    format!("last pulled {} ago, over {}", human(now.saturating_sub(p)), humantime::format_duration(d))
                }
                None => format!("not pulled within {}", humantime::format_duration(d)),
            });
        }
        removals.push(Removal { tag: tag.clone(), reason: why.join("; ") });
    }
    removals
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, Digest};

    const DAY: i64 = 24 * 3600 * 1000;
    const NOW: i64 = 1_000 * DAY;

    fn tag(name: &str, pushed_days_ago: i64, pulled_days_ago: Option<i64>) -> TagInfo {
        TagInfo {
            name: name.into(),
            digest: Digest::compute(Algorithm::Sha256, name.as_bytes()),
            pushed_at: NOW - pushed_days_ago * DAY,
            pulled_at: pulled_days_ago.map(|d| NOW - d * DAY),
        }
    }

    fn rule(entry: RetentionEntry) -> Retention {
        Lifecycle::compile(&[entry], &[], &[]).expect("compiles").retention.remove(0)
    }

    fn removed(rule: &Retention, tags: &[TagInfo]) -> Vec<String> {
        let mut names: Vec<String> =
            tags_to_remove(rule, tags, NOW, |_| false).into_iter().map(|r| r.tag.name).collect();
        names.sort();
        names
    }

    fn tags() -> Vec<TagInfo> {
        vec![
            tag("latest", 0, Some(0)),
            tag("v1.0.0", 100, None),
            tag("v1.1.0", 50, Some(1)),
            tag("v1.2.0", 10, None),
            tag("nightly-1", 40, None),
            tag("nightly-2", 5, Some(30)),
        ]
    }

    #[test]
    fn each_rule_alone() {
        let base = RetentionEntry { repositories: "team/**".into(), ..Default::default() };
        let r = rule(RetentionEntry { keep_last: Some(2), ..base.clone() });
        assert_eq!(removed(&r, &tags()), ["nightly-1", "v1.0.0", "v1.1.0", "v1.2.0"]);
        let r = rule(RetentionEntry { keep_tags: Some(r"v\d+\.\d+\.\d+".into()), ..base.clone() });
        assert_eq!(removed(&r, &tags()), ["latest", "nightly-1", "nightly-2"]);
        let r = rule(RetentionEntry { remove_older_than: Some("30d".into()), ..base.clone() });
        assert_eq!(removed(&r, &tags()), ["nightly-1", "v1.0.0", "v1.1.0"]);
        let r = rule(RetentionEntry { keep_pulled_within: Some("7d".into()), ..base.clone() });
        assert_eq!(removed(&r, &tags()), ["nightly-1", "nightly-2", "v1.0.0", "v1.2.0"]);
        let r = rule(RetentionEntry { remove_untagged_older_than: Some("7d".into()), ..base });
        assert_eq!(removed(&r, &tags()), Vec::<String>::new(), "an untagged rule removes no tag");
    }

    #[test]
    fn rules_combine_keep_wins_and_the_reason_names_the_rule() {
        let r = rule(RetentionEntry {
            repositories: "team/**".into(),
            keep_last: Some(1),
            keep_tags: Some("latest|v1\\.0\\.0".into()),
            keep_pulled_within: Some("7d".into()),
            remove_older_than: Some("20d".into()),
            ..Default::default()
        });
        // latest: newest and matched; v1.0.0 matched; v1.1.0 pulled a day ago; v1.2.0 and
        // nightly-2 too young; nightly-1 is the one that goes.
        assert_eq!(removed(&r, &tags()), ["nightly-1"]);
        let why = &tags_to_remove(&r, &tags(), NOW, |_| false)[0].reason;
        assert!(why.starts_with("[[retention]] entry 1 (repositories = \"team/**\")"), "{why}");
        assert!(why.contains("over 20days"), "{why}");
        assert!(why.contains("not pulled within 7days"), "{why}");
        let kept = tags_to_remove(&r, &tags(), NOW, |name| name == "nightly-1");
        assert!(kept.is_empty(), "a protected tag stays: {kept:?}");
    }

    #[test]
    fn keep_last_breaks_ties_by_name() {
        let r = rule(RetentionEntry { repositories: "**".into(), keep_last: Some(1), ..Default::default() });
        let same = vec![tag("b", 3, None), tag("a", 3, None), tag("c", 3, None)];
        assert_eq!(removed(&r, &same), ["b", "c"]);
    }

    #[test]
    fn mistakes_name_the_entry_and_key() {
        let bad = |e: RetentionEntry| {
            Lifecycle::compile(&[RetentionEntry { keep_last: Some(3), ..e }], &[], &[]).unwrap_err()
        };
        let e =
            bad(RetentionEntry { repositories: "team/**".into(), keep_tags: Some("v(".into()), ..Default::default() });
        assert!(e.starts_with("[[retention]] entry 1: keep_tags = \"v(\" is not a valid regular expression"), "{e}");
        let e = bad(RetentionEntry { repositories: "Team/**".into(), ..Default::default() });
        assert!(e.contains("repositories = \"Team/**\""), "{e}");
        let e = bad(RetentionEntry {
            repositories: "a".into(),
            remove_older_than: Some("soon".into()),
            ..Default::default()
        });
        assert!(e.contains("remove_older_than = \"soon\""), "{e}");
        let e = Lifecycle::compile(&[RetentionEntry { repositories: "a".into(), ..Default::default() }], &[], &[])
            .unwrap_err();
        assert!(e.contains("names no rule"), "{e}");
        let twice = RetentionEntry { repositories: "a/**".into(), keep_last: Some(1), ..Default::default() };
        let e = Lifecycle::compile(&[twice.clone(), twice], &[], &[]).unwrap_err();
        assert!(e.starts_with("[[retention]] entry 2: repositories = \"a/**\" is also [[retention]] entry 1"), "{e}");
        let fixed = ImmutableEntry { repositories: "prod/**".into(), allow_delete: true, ..Default::default() };
        let e = Lifecycle::compile(&[], &[fixed.clone(), ImmutableEntry { allow_delete: false, ..fixed }], &[])
            .unwrap_err();
        assert!(e.starts_with("[[immutable]] entry 2: the same repositories and tags as [[immutable]] entry 1"), "{e}");
        let quota = |n: &str, l: ByteSize| QuotaEntry { namespace: n.into(), limit: l };
        let e = Lifecycle::compile(&[], &[], &[quota("team", ByteSize::Text("10 parsecs".into()))]).unwrap_err();
        assert!(e.starts_with("[[quota]] entry 1: limit: unknown unit \"parsecs\""), "{e}");
        let e = Lifecycle::compile(&[], &[], &[quota("team", ByteSize::Bytes(1)), quota("team/", ByteSize::Bytes(2))])
            .unwrap_err();
        assert!(e.starts_with("[[quota]] entry 2: namespace \"team\" has a quota already"), "{e}");
        let e = Lifecycle::compile(&[], &[], &[quota("te*m", ByteSize::Bytes(1))]).unwrap_err();
        assert!(e.contains("namespace = \"te*m\""), "{e}");
    }

    #[test]
    fn immutable_rules_fix_what_they_name() {
        let rules = Lifecycle::compile(
            &[],
            &[ImmutableEntry {
                repositories: "prod/**".into(),
                except_tags: Some("latest".into()),
                allow_delete: false,
                ..Default::default()
            }],
            &[],
        )
        .expect("compiles");
        assert!(rules.fixing("prod/app", "v1").next().is_some());
        assert!(rules.fixing("prod/app", "latest").next().is_none());
        assert!(rules.fixing("dev/app", "v1").next().is_none());
        assert!(rules.forbids_delete("prod/a/b", "v1").is_some());
    }

    #[test]
    fn sizes_and_namespaces() {
        assert_eq!(ByteSize::Text("10GiB".into()).bytes(), Ok(10 << 30));
        assert_eq!(ByteSize::Text("1.5 MB".into()).bytes(), Ok(1_500_000));
        assert_eq!(ByteSize::Bytes(7).bytes(), Ok(7));
        assert!(in_namespace("team", "team") && in_namespace("team", "team/app"));
        assert!(!in_namespace("team", "teammate/app"));
    }
}
