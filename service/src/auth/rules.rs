//! Access rules: who may pull, push and delete where, and who may list the catalog.
//!
//! The rules file (`BERTH_ACCESS`) is TOML:
//!
//! ```toml
//! [[rules]]
//! users = ["alice", "bob"]            # names; "*" anyone logged in; "anonymous" anyone not
//! repositories = ["team/*", "{user}/**"]
//! actions = ["pull", "push"]          # pull, push, delete, or "*" for all three
//!
//! [[rules]]
//! users = ["admin"]
//! repositories = ["**"]
//! actions = ["*"]
//! catalog = true                      # may list /v2/_catalog
//! ```
//!
//! In a repository pattern, `*` matches within one path segment, `**` any number of
//! segments, and `{user}` the name of the user asking. Rules add up: a user may do what any
//! rule that names them grants. With no rules file, anyone logged in may do everything and
//! anonymous users nothing.

use std::path::Path;

use serde::Deserialize;

use super::{Action, Identity};
use crate::oci::RepoName;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    users: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    catalog: bool,
}

/// The rules in force.
#[derive(Clone, Debug)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

impl AccessRules {
    /// Anyone logged in may do everything; anonymous users nothing.
    pub fn logged_in_may_do_everything() -> AccessRules {
        AccessRules {
            rules: vec![Rule {
                users: vec!["*".into()],
                repositories: vec!["**".into()],
                actions: vec!["*".into()],
                catalog: true,
            }],
        }
    }

    pub fn load(path: &Path) -> Result<AccessRules, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        AccessRules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<AccessRules, String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, rule) in file.rules.iter().enumerate() {
            for action in &rule.actions {
                if !matches!(action.as_str(), "pull" | "push" | "delete" | "*") {
                    return Err(format!("rule {}: unknown action {action:?} (pull, push, delete or *)", i + 1));
                }
            }
            if rule.users.is_empty() {
                return Err(format!("rule {}: names no users", i + 1));
            }
        }
        Ok(AccessRules { rules: file.rules })
    }

    fn applies(rule: &Rule, who: &Identity) -> bool {
        rule.users.iter().any(|u| match who {
            Identity::Anonymous => u == "anonymous",
            Identity::User(name) => u == "*" || u == name,
        })
    }

    /// The actions `who` may take on `repository`.
    pub fn allowed(&self, who: &Identity, repository: &RepoName) -> Vec<Action> {
        let mut granted = Vec::new();
        for rule in self.rules.iter().filter(|r| Self::applies(r, who)) {
            let user = match who {
                Identity::User(name) => Some(name.as_str()),
                Identity::Anonymous => None,
            };
            if !rule.repositories.iter().any(|p| pattern_matches(p, repository.as_str(), user)) {
                continue;
            }
            for action in &rule.actions {
                let actions: &[Action] = match action.as_str() {
                    "pull" => &[Action::Pull],
                    "push" => &[Action::Push],
                    "delete" => &[Action::Delete],
                    _ => &[Action::Pull, Action::Push, Action::Delete],
                };
                for a in actions {
                    if !granted.contains(a) {
                        granted.push(*a);
                    }
                }
            }
        }
        granted
    }

    /// Whether `who` may list the catalog.
    pub fn catalog(&self, who: &Identity) -> bool {
        self.rules.iter().any(|r| r.catalog && Self::applies(r, who))
    }
}

/// Matches a repository name against a pattern, segment by segment.
pub(crate) fn pattern_matches(pattern: &str, name: &str, user: Option<&str>) -> bool {
    let pattern = match (pattern.contains("{user}"), user) {
        (true, Some(user)) => pattern.replace("{user}", user),
        (true, None) => return false,
        (false, _) => pattern.to_owned(),
    };
    let pattern: Vec<&str> = pattern.split('/').collect();
    let name: Vec<&str> = name.split('/').collect();
    segments_match(&pattern, &name)
}

fn segments_match(pattern: &[&str], name: &[&str]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(&"**"), _) => (0..=name.len()).any(|skip| segments_match(&pattern[1..], &name[skip..])),
        (Some(p), Some(n)) => glob(p, n) && segments_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// `*` within one segment.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(tail) = text.strip_prefix(prefix) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> RepoName {
        name.parse().expect("valid name")
    }

    const RULES: &str = r#"
[[rules]]
users = ["alice"]
repositories = ["team/*", "{user}/**"]
actions = ["pull", "push"]

[[rules]]
users = ["*"]
repositories = ["public/**"]
actions = ["pull"]

[[rules]]
users = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[[rules]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]
catalog = true
"#;

    #[test]
    fn rules_grant_what_they_name_and_nothing_else() {
        let rules = AccessRules::parse(RULES).expect("parses");
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        assert_eq!(rules.allowed(&alice, &repo("team/app")), [Action::Pull, Action::Push]);
        assert_eq!(rules.allowed(&alice, &repo("team/app/deep")), []);
        assert_eq!(rules.allowed(&alice, &repo("alice/x/y")), [Action::Pull, Action::Push]);
        assert_eq!(rules.allowed(&bob, &repo("alice/x")), []);
        assert_eq!(rules.allowed(&bob, &repo("public/a/b")), [Action::Pull]);
        assert_eq!(rules.allowed(&Identity::Anonymous, &repo("public/a")), [Action::Pull]);
        assert_eq!(rules.allowed(&Identity::Anonymous, &repo("team/app")), []);
        let admin = Identity::User("admin".into());
        assert_eq!(rules.allowed(&admin, &repo("any/thing")), [Action::Pull, Action::Push, Action::Delete]);
        assert!(rules.catalog(&admin) && !rules.catalog(&alice) && !rules.catalog(&Identity::Anonymous));
    }

    #[test]
    fn the_default_lets_logged_in_users_do_everything() {
        let rules = AccessRules::logged_in_may_do_everything();
        assert_eq!(rules.allowed(&Identity::User("x".into()), &repo("a/b")).len(), 3);
        assert!(rules.allowed(&Identity::Anonymous, &repo("a/b")).is_empty());
        assert!(rules.catalog(&Identity::User("x".into())) && !rules.catalog(&Identity::Anonymous));
    }

    #[test]
    fn bad_rules_files_are_refused() {
        assert!(AccessRules::parse("[[rules]]\nusers = [\"a\"]\nactions = [\"write\"]\n").is_err());
        assert!(AccessRules::parse("[[rules]]\nusers = []\n").is_err());
        assert!(AccessRules::parse("[[rules]]\nuser = [\"a\"]\n").is_err());
    }

    #[test]
    fn globs_stay_within_segments() {
        assert!(glob("team-*", "team-a") && !glob("team-*", "other"));
        assert!(pattern_matches("a/**", "a", None) && pattern_matches("a/**", "a/b/c", None));
        assert!(!pattern_matches("a/*", "a/b/c", None));
        assert!(pattern_matches("**/tools", "x/y/tools", None));
    }
}
