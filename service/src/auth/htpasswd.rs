//! Users and their passwords, from an htpasswd file of bcrypt hashes (`htpasswd -B`, or
//! `berth user add`). The file is read again when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(2);
/// How long a verified password is remembered, so that a client sending its credentials with
/// every request does not cost a bcrypt run each time.
const REMEMBER: Duration = Duration::from_secs(300);
/// Cost of the hashes `berth user add` writes.
pub const COST: u32 = 10;

pub struct Htpasswd {
    path: PathBuf,
    state: RwLock<Loaded>,
    /// Verified logins by user. The password itself is never kept.
    verified: Mutex<HashMap<String, Verified>>,
    /// Hash checked for unknown users, so that they take as long as known ones.
    decoy: String,
}

/// A login remembered: the hash it matched, the SHA-256 of the password, until when.
type Verified = (String, [u8; 32], Instant);

struct Loaded {
    users: HashMap<String, String>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// One line of an htpasswd file that names a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub hash: String,
    /// Line number, from 1.
    pub line: usize,
}

impl Entry {
    /// What kind of hash it is, when not bcrypt.
    pub fn weakness(&self) -> Option<&'static str> {
        let hash = &self.hash;
        if hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$") {
            None
        } else if hash.starts_with("$apr1$") {
            Some("an MD5 (apr1) hash")
        } else if hash.starts_with("{SHA}") {
            Some("a SHA-1 hash")
        } else if hash.starts_with('$') {
            Some("a crypt(3) hash")
        } else {
            Some("not a hash Berth knows (crypt or plain text)")
        }
    }
}

/// The user entries of htpasswd text, whatever their hash; comments and blank lines skipped.
pub fn entries(text: &str) -> Result<Vec<Entry>, String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| format!("line {}: expected user:hash", number + 1))?;
        found.push(Entry { user: user.to_owned(), hash: hash.to_owned(), line: number + 1 });
    }
    Ok(found)
}

/// Parses htpasswd text, refusing any entry that is not bcrypt.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for entry in entries(text)? {
        if let Some(kind) = entry.weakness() {
            return Err(format!(
                "line {}: user {:?} has {kind}; only bcrypt is accepted (htpasswd -B, or berth user add)",
                entry.line, entry.user
            ));
        }
        users.insert(entry.user, entry.hash);
    }
    Ok(users)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Htpasswd {
    /// Reads the file; fails, naming the entry, if it holds anything but bcrypt hashes.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let users = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let decoy = bcrypt::hash("decoy password", COST).map_err(|e| e.to_string())?;
        Ok(Htpasswd {
            path: path.to_owned(),
            state: RwLock::new(Loaded { users, modified: modified(path), checked: Instant::now() }),
            verified: Mutex::new(HashMap::new()),
            decoy,
        })
    }

    /// Reads the file again if it changed since it was last read.
    fn refresh(&self) {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now();
        let now = modified(&self.path);
        if now == state.modified {
            return;
        }
        match std::fs::read_to_string(&self.path).map_err(|e| e.to_string()).and_then(|t| parse(&t)) {
            Ok(users) => {
                tracing::info!(path = %self.path.display(), users = users.len(), "htpasswd file reloaded");
                state.users = users;
                state.modified = now;
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "htpasswd file not reloaded"),
        }
    }

    pub fn knows(&self, user: &str) -> bool {
        self.refresh();
        self.state.read().unwrap_or_else(|e| e.into_inner()).users.contains_key(user)
    }

    /// Whether `password` is `user`'s. Unknown users take as long as known ones.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let hash = self.state.read().unwrap_or_else(|e| e.into_inner()).users.get(user).cloned();
        let fingerprint: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if let Some(hash) = &hash {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((known, print, until)) = verified.get(user)
                && known == hash
                && *until > Instant::now()
                && constant_time_eq(print, &fingerprint)
            {
                return true;
            }
        }
        let checked_against = hash.clone().unwrap_or_else(|| self.decoy.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &checked_against).unwrap_or(false))
            .await
            .unwrap_or(false);
        match hash {
            Some(hash) if matches => {
                let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                verified.insert(user.to_owned(), (hash, fingerprint, Instant::now() + REMEMBER));
                true
            }
            _ => false,
        }
    }
}

/// Compares two digests in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The htpasswd file's text; empty when it does not exist yet.
fn read_file(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes next to the file and renames, so that a reader never sees half a file.
fn write_file(path: &Path, lines: &[String]) -> Result<(), String> {
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    let temporary = path.with_extension("berth-new");
    std::fs::write(&temporary, out).map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// The file's lines without `user`'s entry, and that entry if there was one.
fn without(text: &str, user: &str) -> (Vec<String>, bool) {
    let mut found = false;
    let lines = text
        .lines()
        .filter(|l| {
            let ours = l.trim().split_once(':').is_some_and(|(u, _)| u == user) && !l.trim().starts_with('#');
            found |= ours;
            !ours
        })
        .map(str::to_owned)
        .collect();
    (lines, found)
}

/// Adds or replaces `user` in the htpasswd file at `path` (created if missing). Returns
/// warnings: an entry of `user` that was not bcrypt is replaced, and other users whose
/// entries `berth serve` refuses are named, so that they can be replaced the same way.
pub fn add_user(path: &Path, user: &str, password: &str) -> Result<Vec<String>, String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(format!("invalid user name {user:?}: no colons or spaces"));
    }
    if password.is_empty() {
        return Err("empty password".into());
    }
    let text = read_file(path)?;
    let found = entries(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut warnings = Vec::new();
    for entry in &found {
        match entry.weakness() {
            Some(kind) if entry.user == user => {
                warnings.push(format!("{user} had {kind}; it is replaced by a bcrypt one"));
            }
            Some(kind) => warnings.push(format!(
                "{} (line {}) has {kind}, which berth serve refuses: set it again with berth user add {}",
                entry.user, entry.line, entry.user
            )),
            None => {}
        }
    }
    let hash = bcrypt::hash(password, COST).map_err(|e| e.to_string())?;
    let (mut lines, _) = without(&text, user);
    lines.push(format!("{user}:{hash}"));
    write_file(path, &lines)?;
    Ok(warnings)
}

/// Removes `user` from the htpasswd file; whether it was there.
pub fn remove_user(path: &Path, user: &str) -> Result<bool, String> {
    let text = read_file(path)?;
    let (lines, found) = without(&text, user);
    if found {
        write_file(path, &lines)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_is_accepted() {
        let ok =
            parse("# comment\n\nalice:$2y$05$abcdefghijklmnopqrstuuY0pGx6sjM7f7mR5tH2H1ZQ7m0ZrUeW\n").expect("bcrypt");
        assert!(ok.contains_key("alice"));
        for (line, says) in [
            ("bob:$apr1$x$y", "MD5"),
            ("bob:{SHA}abc", "SHA-1"),
            ("bob:$1$salt$hash", "crypt(3)"),
            ("bob:plaintext", "plain"),
        ] {
            let e = parse(line).expect_err("refused");
            assert!(e.contains("bob") && e.contains(says), "{e}");
        }
        assert!(parse("nocolon").is_err());
    }

    #[tokio::test]
    async fn users_added_verify_and_changes_are_seen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("htpasswd");
        add_user(&path, "alice", "s3cret").expect("added");
        let users = Htpasswd::load(&path).expect("loads");
        assert!(users.verify("alice", "s3cret").await);
        assert!(users.verify("alice", "s3cret").await, "remembered");
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("mallory", "s3cret").await);
        add_user(&path, "alice", "changed").expect("replaced");
        add_user(&path, "bob", "b").expect("added");
        // The file is looked at again after RECHECK.
        users.state.write().expect("lock").checked -= RECHECK;
        std::thread::sleep(Duration::from_millis(20));
        assert!(!users.verify("alice", "s3cret").await, "the old password no longer works");
        assert!(users.verify("alice", "changed").await);
        assert!(users.knows("bob"));
        assert!(add_user(&path, "a:b", "x").is_err());
        assert!(remove_user(&path, "bob").expect("removed"));
        assert!(!remove_user(&path, "bob").expect("already gone"));
        let names: Vec<String> = entries(&std::fs::read_to_string(&path).expect("read"))
            .expect("entries")
            .into_iter()
            .map(|e| e.user)
            .collect();
        assert_eq!(names, ["alice"]);
    }

    #[test]
    fn a_legacy_entry_is_replaced_and_the_others_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "# legacy\nalice:$apr1$abc$def\nbob:{SHA}xyz\n").expect("write");
        let warnings = add_user(&path, "alice", "new").expect("added");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("alice had an MD5"), "{warnings:?}");
        assert!(warnings[1].contains("bob (line 3) has a SHA-1 hash"), "{warnings:?}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# legacy\nbob:{SHA}xyz\nalice:$2"), "{text}");
        // Once bob is set again, the file is all bcrypt and serve takes it.
        add_user(&path, "bob", "b").expect("added");
        Htpasswd::load(&path).expect("loads");
    }
}
